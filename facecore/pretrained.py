"""``save_pretrained`` / ``from_pretrained`` for torch modules with a JSON config (diffusers' convention).

A folder holds ``config.json`` (the constructor's keyword arguments plus ``_class_name``), one
safetensors weights file and ``checksums.sha256``; it is written atomically and verified on load
(no pickle). diffusers' own ``ModelMixin.save_pretrained`` writes no checksums and its loader
may reach for the Hub, so components of this project use this small base instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .artifacts import read_json, verify_artifact, write_artifact
from .errors import ArtifactError, FacePrivacyError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class PretrainedModule(torch.nn.Module):
    """A module whose ``__init__(**config)`` rebuilds it; subclasses set ``self.config`` to that dict."""

    config: dict[str, Any]
    weights_name: ClassVar[str] = WEIGHTS_NAME

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write config and weights (cast to ``dtype``, e.g. ``torch.float16``, when given) atomically."""
        tensors = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).cpu().contiguous()
                   for k, v in self.state_dict().items()}
        return write_artifact(directory, {self.weights_name: st_save(tensors),
                                          CONFIG_NAME: {**self.config, "_class_name": type(self).__name__}})

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu"):
        """Load a folder written by :meth:`save_pretrained` (checksums verified, weights cast to float32)."""
        sums = verify_artifact(directory, (CONFIG_NAME,))
        config = read_json(directory, CONFIG_NAME)
        if not isinstance(config, dict) or config.get("_class_name") != cls.__name__:
            found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
            raise ArtifactError(f"{directory} holds a {found}, not a {cls.__name__}")
        if cls.weights_name not in sums:
            raise ArtifactError(f"{directory}: {cls.weights_name} is missing from the artifact")
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        try:
            model = cls(**kwargs)
            state = st_load((Path(directory) / cls.weights_name).read_bytes())
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            raise ArtifactError(f"{directory}: config and weights do not build a {cls.__name__}: {exc}") from exc
        except FacePrivacyError as exc:
            raise ArtifactError(f"{directory}: invalid {cls.__name__} config: {exc}") from exc
        return model.to(map_location).eval()
