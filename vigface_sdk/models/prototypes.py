"""Prototype store: real and virtual identity prototypes with their metadata (safetensors + JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facecore.errors import IncompatibleError, InvalidInputError
from facecore.pretrained import Contents, Pretrained


@dataclass
class PrototypeStore(Pretrained):
    """``real`` (n, D) and ``virtual`` (k, D) unit-norm prototypes of one face feature space.

    ``metadata`` holds at least ``backbone_fingerprint`` and the margin settings the space was trained with.
    """

    weights_name = "prototypes.safetensors"
    format_key = "format"
    format_name = "vigface-prototypes/1"

    real: np.ndarray
    virtual: np.ndarray
    identities: list[str]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.real = np.asarray(self.real, np.float32)
        self.virtual = np.asarray(self.virtual, np.float32).reshape(-1, self.real.shape[-1] if self.real.ndim == 2 else 0)
        if self.real.ndim != 2 or self.real.shape[0] == 0:
            raise InvalidInputError(f"real prototypes must be a non-empty (n, D) array, got {self.real.shape}")
        if len(self.identities) != len(self.real):
            raise InvalidInputError(f"{len(self.identities)} identity names for {len(self.real)} real prototypes")
        if not (np.isfinite(self.real).all() and np.isfinite(self.virtual).all()):
            raise InvalidInputError("prototypes contain NaN or Inf")

    @property
    def dim(self) -> int:
        return int(self.real.shape[1])

    @property
    def backbone_fingerprint(self) -> str | None:
        return self.metadata.get("backbone_fingerprint")

    def check_backbone(self, fingerprint: str) -> None:
        """Raise :class:`IncompatibleError` unless the store was built with this backbone."""
        if self.backbone_fingerprint != fingerprint:
            raise IncompatibleError(
                f"prototypes were trained with backbone {self.backbone_fingerprint}, not {fingerprint}; "
                "use the backbone saved with the space or retrain it (vigface-cli train-space)"
            )

    def to_contents(self) -> Contents:
        config = {**self.metadata, "dim": self.dim, "num_real": len(self.real), "num_virtual": len(self.virtual),
                  "identities": list(self.identities)}
        return Contents(config, {"real": self.real, "virtual": self.virtual})

    @classmethod
    def from_contents(cls, contents: Contents, directory: Path, backbone_fingerprint: str | None = None) -> "PrototypeStore":
        config, tensors = contents.config, contents.tensors
        meta = {k: v for k, v in config.items() if k not in ("identities", "num_real", "num_virtual", "format")}
        store = cls(tensors["real"], tensors["virtual"], list(config["identities"]), meta)
        if store.dim != config.get("dim"):
            raise IncompatibleError(f"{directory}: config says dim {config.get('dim')}, weights have {store.dim}")
        if backbone_fingerprint is not None:
            store.check_backbone(backbone_fingerprint)
        return store
