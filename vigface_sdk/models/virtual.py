"""Virtual identity prototypes drawn from a Gaussian fitted to real prototypes, kept away from real people.

The diffusion model only saw prototypes of real people, which fill a low-dimensional part of the
sphere; uniformly random unit vectors fall outside it. Drawing from the fitted Gaussian keeps
virtual identities in the region the model learned while being new points. With ``exclude`` (real
prototypes, e.g. every identity of the training data *and* of public face sets) a draw whose cosine
to any of them exceeds ``max_similarity`` is rejected and redrawn, so no virtual identity sits closer
to a real person than that. Prototype ``i`` depends only on ``(seed, i)``: any identity can be
regenerated alone. Stage 1's learned virtual prototypes (``PrototypeStore.virtual``) are the other source.

With ``intra_tril`` (the Cholesky factor of how real embeddings scatter around their identity's prototype),
:meth:`vary` gives each image of an identity its own point near the prototype, so that samples of one
virtual identity differ as much as photos of one real person do in the recognizer's eyes (measured here:
without it, samples of one identity matched each other at cosine 0.89 by an independent recognizer,
real photos of one person at 0.68).
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError
from facecore.pretrained import Contents, Pretrained

MAX_ATTEMPTS = 1000


class VirtualPrototypeSampler(Pretrained):
    """``sample(indices, seed)`` → unit prototypes ``normalize(mean + L z)`` with ``z`` seeded per index,
    redrawn while closer than ``max_similarity`` (cosine) to any ``exclude`` prototype."""

    weights_name = "sampler.safetensors"

    def __init__(self, mean: np.ndarray, scale_tril: np.ndarray, exclude: np.ndarray | None = None,
                 max_similarity: float | None = None, metadata: dict | None = None, intra_tril: np.ndarray | None = None):
        self.mean = np.asarray(mean, np.float32)
        self.scale_tril = np.asarray(scale_tril, np.float32)
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d <= 0 or self.scale_tril.shape != (d, d) or not np.isfinite(self.scale_tril).all() or not np.isfinite(self.mean).all():
            raise InvalidInputError(f"mean must be a finite (D,) and scale_tril (D, D), got {self.mean.shape} and {self.scale_tril.shape}")
        if (exclude is None) != (max_similarity is None):
            raise InvalidInputError("pass exclude and max_similarity together")
        self.exclude = None if exclude is None else l2_normalize(np.asarray(exclude, np.float32).reshape(-1, d)).astype(np.float32)
        if max_similarity is not None and not -1 < float(max_similarity) < 1:
            raise InvalidInputError(f"max_similarity must be a cosine in (-1, 1), got {max_similarity}")
        self.max_similarity = None if max_similarity is None else float(max_similarity)
        self.intra_tril = None if intra_tril is None else np.asarray(intra_tril, np.float32)
        if self.intra_tril is not None and (self.intra_tril.shape != (d, d) or not np.isfinite(self.intra_tril).all()):
            raise InvalidInputError(f"intra_tril must be a finite ({d}, {d}) matrix, got {self.intra_tril.shape}")
        self.metadata = dict(metadata or {})

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, prototypes: np.ndarray, shrinkage: float = 1e-3, exclude: np.ndarray | None = None,
            max_similarity: float | None = None, metadata: dict | None = None,
            residuals: np.ndarray | None = None) -> "VirtualPrototypeSampler":
        """Fit to real prototypes ``(n, D)`` (normalised first); ``shrinkage`` adds a ridge to the covariance,
        at least ``D / n`` (capped at 1) so that few identities still give a full-rank Gaussian. ``residuals``:
        unit embeddings minus their identity's prototype ``(m, D)``, for :meth:`vary`."""
        p = l2_normalize(np.asarray(prototypes, np.float64))
        if p.ndim != 2 or len(p) < 2 or not np.isfinite(p).all():
            raise InvalidInputError(f"need at least two finite prototypes (n, D), got shape {np.shape(prototypes)}")
        cov = np.cov(p.T)
        shrinkage = max(shrinkage, min(1.0, p.shape[1] / len(p)))
        cov += shrinkage * np.trace(cov) / p.shape[1] * np.eye(p.shape[1]) + 1e-9 * np.eye(p.shape[1])
        intra = None
        if residuals is not None:
            r = np.asarray(residuals, np.float64)
            if r.ndim != 2 or r.shape[1] != p.shape[1] or len(r) < 2 or not np.isfinite(r).all():
                raise InvalidInputError(f"residuals must be a finite (m >= 2, {p.shape[1]}) array, got {r.shape}")
            intra = np.linalg.cholesky(np.cov(r.T) + 1e-6 * np.eye(p.shape[1]))
        return cls(p.mean(0), np.linalg.cholesky(cov), exclude, max_similarity, {**(metadata or {}), "fitted_on": int(len(p))},
                   intra)

    def vary(self, prototypes: np.ndarray, generators: list, scale: float = 1.0) -> np.ndarray:
        """One point per row near its prototype, ``normalize(p + scale · L_intra z)``, ``z`` from that row's generator."""
        if self.intra_tril is None:
            raise InvalidInputError("this sampler has no intra-identity spread (fit it with residuals)")
        import torch

        z = torch.stack([torch.randn(self.dim, generator=g, dtype=torch.float64) for g in generators]).numpy()
        return l2_normalize(np.asarray(prototypes, np.float64) + scale * z @ self.intra_tril.T.astype(np.float64)).astype(np.float32)

    def _draw(self, seed: int, index: int) -> np.ndarray:
        for attempt in range(MAX_ATTEMPTS):
            z = np.random.default_rng([int(seed), int(index), attempt]).standard_normal(self.dim)
            p = l2_normalize(self.mean + z @ self.scale_tril.T.astype(np.float64))
            if self.exclude is None or float((self.exclude @ p.astype(np.float32)).max()) <= self.max_similarity:
                return p
        raise InvalidInputError(f"no prototype farther than cosine {self.max_similarity} from every excluded identity in "
                                f"{MAX_ATTEMPTS} draws; raise max_similarity")

    def sample(self, indices, seed: int = 0) -> np.ndarray:
        """Unit-norm float32 prototypes ``(len(indices), D)``; row ``k`` depends only on ``(seed, indices[k])``."""
        indices = np.atleast_1d(np.asarray(indices, np.int64))
        if (indices < 0).any():
            raise InvalidInputError("prototype indices must be non-negative")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}")
        if not len(indices):
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._draw(seed, i) for i in indices]).astype(np.float32)

    def to_contents(self) -> Contents:
        tensors = {"mean": self.mean, "scale_tril": self.scale_tril}
        if self.exclude is not None:
            tensors["exclude"] = self.exclude.astype(np.float16)
        if self.intra_tril is not None:
            tensors["intra_tril"] = self.intra_tril
        return Contents({**self.metadata, "dim": self.dim, "max_similarity": self.max_similarity}, tensors)

    @classmethod
    def from_contents(cls, contents: Contents, directory: Path) -> "VirtualPrototypeSampler":
        config, t = contents.config, contents.tensors
        meta = {k: v for k, v in config.items() if k not in ("_class_name", "dim", "max_similarity")}
        exclude = t["exclude"].astype(np.float32) if "exclude" in t else None
        return cls(t["mean"], t["scale_tril"], exclude, config.get("max_similarity"), meta, t.get("intra_tril"))


def load_prototype_store(path: str | Path):
    """A ``PrototypeStore`` folder, or a stage-1 space folder holding one in ``prototypes/``."""
    from .prototypes import PrototypeStore

    path = Path(path)
    return PrototypeStore.from_pretrained(path / "prototypes" if (path / "prototypes").is_dir() else path)
