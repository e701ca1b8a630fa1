"""Protector artifacts: ``config.json`` + ``generator.safetensors`` + ``generator.onnx`` + checksums.

``load_artifact("fr128")`` opens a default shipped with the package; any other string is a folder.
Loading never unpickles, verifies every checksum and checks the config against the weights.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from facecore import __version__
from facecore.artifacts import read_json, verify_artifact, write_artifact
from facecore.errors import ArtifactError, IncompatibleError

from ._onnx_export import generator_to_onnx
from .models.generator import NoiseGenerator

WEIGHTS, CONFIG, ONNX = "generator.safetensors", "config.json", "generator.onnx"
FORMAT = "advface-protector/1"


def default_artifacts() -> dict[str, Path]:
    """Shipped defaults: ``{name: folder}`` (one per shared recognizer trained by this project)."""
    root = Path(str(resources.files("advface_sdk") / "defaults"))
    return {p.name: p for p in sorted(root.iterdir()) if (p / WEIGHTS).is_file()} if root.is_dir() else {}


def default_shadow(name: str) -> Path:
    """Folder of the shipped shadow decoder for a default recognizer (``"fr128"``)."""
    path = Path(str(resources.files("advface_sdk") / "defaults" / "shadows" / name))
    if not (path / "decoder.safetensors").is_file():
        raise ArtifactError(f"no shipped shadow decoder for {name!r}")
    return path


@dataclass
class ProtectorArtifact:
    directory: Path
    config: dict
    state: dict[str, np.ndarray]

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX

    @property
    def recognizer_fingerprint(self) -> str | None:
        return self.config.get("recognizer", {}).get("fingerprint")

    def check_recognizer(self, fingerprint: str | None) -> None:
        """Refuse embeddings of another recognizer than the one this artifact was trained for."""
        if fingerprint is not None and fingerprint != self.recognizer_fingerprint:
            raise IncompatibleError(
                f"artifact {self.directory.name} was trained for recognizer {self.recognizer_fingerprint} "
                f"({self.config.get('recognizer', {}).get('name')}), not {fingerprint}: train one for your recognizer "
                "(advface-cli train-shadow / train-generator)"
            )

    def build_generator(self) -> NoiseGenerator:
        import torch

        gen = NoiseGenerator(self.dim, self.config["hidden"], self.config["budget"])
        gen.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.state.items()})
        return gen.eval()


def save_artifact(generator: NoiseGenerator, directory: str | Path, recognizer: dict, training: dict | None = None) -> Path:
    """Write a protector artifact; ``recognizer`` holds at least ``name`` and ``fingerprint``."""
    import torch

    state = {k: v.detach().cpu().float().numpy() for k, v in generator.state_dict().items()}
    config = {**generator.config, "format": FORMAT, "recognizer": recognizer, "training": training or {},
              "versions": {"sdk": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                           "python": platform.python_version()}}
    model = generator_to_onnx(state, config)
    return write_artifact(directory, {WEIGHTS: st_save(state), CONFIG: config, ONNX: model.SerializeToString()})


def load_artifact(name_or_path: str | Path) -> ProtectorArtifact:
    """Open and verify an artifact (a default name such as ``"fr128"`` or a folder)."""
    defaults = default_artifacts()
    directory = defaults.get(str(name_or_path)) or Path(name_or_path)
    if not directory.is_dir():
        raise ArtifactError(f"no protector artifact at {name_or_path!r}; defaults: {sorted(defaults) or 'none installed'}")
    verify_artifact(directory, (WEIGHTS, CONFIG, ONNX))
    config = read_json(directory, CONFIG)
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{directory}: unknown artifact format {config.get('format')!r}, expected {FORMAT}")
    try:
        state = st_load((directory / WEIGHTS).read_bytes())
    except Exception as exc:
        raise ArtifactError(f"{directory / WEIGHTS} is not valid safetensors: {exc}") from exc
    first = state.get("net.0.weight")
    if first is None or first.shape != (config["hidden"], config["dim"]):
        raise ArtifactError(f"{directory}: weights do not match the config (dim {config['dim']}, hidden {config['hidden']})")
    return ProtectorArtifact(directory, config, state)
