"""Virtual identity prototypes drawn from a Gaussian fitted to the real training prototypes.

The diffusion model only saw prototypes of real people, which fill a low-dimensional part of the
sphere (about 100 effective dimensions of fr512's 512); uniformly random unit vectors fall outside
it. Drawing from the fitted Gaussian keeps virtual identities in the region the model learned while
being new points: prototype ``i`` depends only on ``(seed, i)``, so any identity can be regenerated.
Stage 1's learned virtual prototypes (``PrototypeStore.virtual``) are the other source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from facecore.artifacts import read_json, verify_artifact, write_artifact
from facecore.embeddings import l2_normalize
from facecore.errors import ArtifactError, InvalidInputError

WEIGHTS = "sampler.safetensors"
CONFIG = "config.json"


class VirtualPrototypeSampler:
    """``sample(indices, seed)`` → unit prototypes ``normalize(mean + L z)`` with ``z`` seeded per index."""

    def __init__(self, mean: np.ndarray, scale_tril: np.ndarray, metadata: dict | None = None):
        self.mean = np.asarray(mean, np.float32)
        self.scale_tril = np.asarray(scale_tril, np.float32)
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d <= 0 or self.scale_tril.shape != (d, d):
            raise InvalidInputError(f"mean must be (D,) and scale_tril (D, D), got {self.mean.shape} and {self.scale_tril.shape}")
        self.metadata = dict(metadata or {})

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, prototypes: np.ndarray, shrinkage: float = 1e-3, metadata: dict | None = None) -> "VirtualPrototypeSampler":
        """Fit to real prototypes ``(n, D)`` (normalised first); ``shrinkage`` adds a ridge to the covariance."""
        p = l2_normalize(np.asarray(prototypes, np.float64))
        if p.ndim != 2 or len(p) < 2 or not np.isfinite(p).all():
            raise InvalidInputError(f"need at least two finite prototypes (n, D), got shape {np.shape(prototypes)}")
        cov = np.cov(p.T) if len(p) > 1 else np.zeros((p.shape[1], p.shape[1]))
        cov += shrinkage * np.trace(cov) / p.shape[1] * np.eye(p.shape[1]) + 1e-9 * np.eye(p.shape[1])
        return cls(p.mean(0), np.linalg.cholesky(cov), {**(metadata or {}), "fitted_on": int(len(p))})

    def sample(self, indices, seed: int = 0) -> np.ndarray:
        """Unit-norm float32 prototypes ``(len(indices), D)``; row ``k`` depends only on ``(seed, indices[k])``."""
        indices = np.atleast_1d(np.asarray(indices, np.int64))
        if (indices < 0).any():
            raise InvalidInputError("prototype indices must be non-negative")
        z = np.stack([np.random.default_rng([int(seed), int(i)]).standard_normal(self.dim) for i in indices]) \
            if len(indices) else np.zeros((0, self.dim))
        return l2_normalize(self.mean + z @ self.scale_tril.T.astype(np.float64)).astype(np.float32)

    def save_pretrained(self, directory: str | Path) -> Path:
        weights = st_save({"mean": self.mean, "scale_tril": np.ascontiguousarray(self.scale_tril)})
        return write_artifact(directory, {WEIGHTS: weights, CONFIG: {**self.metadata, "_class_name": type(self).__name__,
                                                                       "dim": self.dim}})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "VirtualPrototypeSampler":
        verify_artifact(directory, (WEIGHTS, CONFIG))
        config = read_json(directory, CONFIG)
        try:
            t = st_load((Path(directory) / WEIGHTS).read_bytes())
            return cls(t["mean"], t["scale_tril"], {k: v for k, v in config.items() if k not in ("_class_name", "dim")})
        except (KeyError, InvalidInputError) as exc:
            raise ArtifactError(f"{directory}: not a virtual prototype sampler: {exc}") from exc


def load_prototype_store(path: str | Path):
    """A ``PrototypeStore`` folder, or a stage-1 space folder holding one in ``prototypes/``."""
    from .prototypes import PrototypeStore

    path = Path(path)
    return PrototypeStore.from_pretrained(path / "prototypes" if (path / "prototypes").is_dir() else path)
