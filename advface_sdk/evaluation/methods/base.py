"""The template-protection interface shared by every method of the benchmark.

A method turns enrolment embeddings into stored templates (:meth:`protect_gallery`), turns a
probe embedding into whatever is compared against them (:meth:`transform_probe`) and scores
gallery/probe rows pairwise (:meth:`match`, higher = same person).  Keyed methods derive every
user's secret deterministically from ``(seed, method name, user_id)``: whoever knows the method
seed and a user id (the "stolen-token" scenario) gets exactly that user's transform, either by
calling the methods with that id or through :meth:`KeyedMethod.user_key`.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from facecore.errors import InvalidInputError, NonFiniteError
from facecore.metrics import cosine_scores


class ProtectionMethod(ABC):
    """Base class: validation, per-user dispatch and the common attributes.

    ``dim`` (optional) pins the embedding size; :meth:`fit` sets it from the training embeddings.
    """

    name: ClassVar[str]
    #: stored templates are bit codes (bool arrays) compared by Hamming similarity
    binary: ClassVar[bool] = False
    #: the transform depends on a per-user secret (see :class:`KeyedMethod`)
    keyed: ClassVar[bool] = False

    def __init__(self, seed: int = 0, dim: int | None = None) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidInputError(f"{self.name}: seed must be a non-negative integer, got {seed!r}")
        if dim is not None and (not isinstance(dim, (int, np.integer)) or dim < 1):
            raise InvalidInputError(f"{self.name}: dim must be a positive integer or None, got {dim!r}")
        self.seed = int(seed)
        self.dim = None if dim is None else int(dim)

    # ------------------------------------------------------------------ public API
    def fit(self, train_embeddings: np.ndarray, train_labels: np.ndarray | None = None) -> "ProtectionMethod":
        """Learn what the method needs from training data (the baselines: only the embedding size)."""
        z = self._check_embeddings(train_embeddings, check_dim=False)
        self.dim = z.shape[1]
        return self

    def protect_gallery(self, embeddings: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        """Stored (protected) templates, one row per embedding, deterministic given ``user_ids`` and seed."""
        z, uid = self._check_pair(embeddings, user_ids)
        return self._protect(z, uid)

    def transform_probe(self, embeddings: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        """Probes as compared against the gallery of the *claimed* ``user_ids``."""
        z, uid = self._check_pair(embeddings, user_ids)
        return self._probe(z, uid)

    def match(self, probes: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Row-wise similarity ``(N,)`` of transformed probes and stored templates (higher = same)."""
        probes, stored = np.asarray(probes), np.asarray(stored)
        if probes.ndim != 2 or probes.shape != stored.shape or probes.shape[0] == 0:
            raise InvalidInputError(
                f"{self.name}: probes and stored templates must be non-empty 2-D arrays of the same shape, "
                f"got {probes.shape} and {stored.shape}")
        if self.binary:
            return 1.0 - np.mean(probes.astype(bool) != stored.astype(bool), axis=1)
        if not (np.isfinite(probes).all() and np.isfinite(stored).all()):
            raise NonFiniteError(f"{self.name}: probes or stored templates contain NaN or Inf")
        return cosine_scores(probes.astype(np.float64), stored.astype(np.float64))

    @abstractmethod
    def bytes_per_template(self, dim: int) -> int:
        """Bytes one stored template needs for ``dim``-dimensional embeddings (bits packed)."""

    @abstractmethod
    def output_dim(self, dim: int) -> int:
        """Length of a stored template (number of values or bits) for ``dim``-dimensional embeddings."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters; ``create_method(**m.to_dict())`` rebuilds the method."""
        return {"name": self.name, "seed": self.seed, "dim": self.dim, **self._params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ for subclasses
    def _params(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray: ...

    def _probe(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return z.astype(np.float32)

    def _rng(self, user_id: int) -> np.random.Generator:
        """The generator of one user's secret: a function of (seed, method name, user id) only."""
        tag = zlib.crc32(self.name.encode())
        return np.random.default_rng(np.random.SeedSequence([self.seed, tag, int(user_id)]))

    @staticmethod
    def _per_user(z: np.ndarray, user_ids: np.ndarray, fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
        """Apply ``fn(rows, user_id)`` to the rows of each distinct user; rows keep their order."""
        users, inverse = np.unique(user_ids, return_inverse=True)
        out = None
        for k, u in enumerate(users):
            rows = np.flatnonzero(inverse == k)
            res = fn(z[rows], int(u))
            if out is None:
                out = np.empty((len(z),) + res.shape[1:], res.dtype)
            out[rows] = res
        return out

    # ------------------------------------------------------------------ validation
    def _check_embeddings(self, embeddings, check_dim: bool = True) -> np.ndarray:
        z = np.asarray(embeddings)
        if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
            raise InvalidInputError(f"{self.name}: embeddings must be a non-empty (N, D) array, got shape {z.shape}")
        if not np.issubdtype(z.dtype, np.number) or np.iscomplexobj(z):
            raise InvalidInputError(f"{self.name}: embeddings must be real numbers, got dtype {z.dtype}")
        z = z.astype(np.float64)
        if not np.isfinite(z).all():
            raise NonFiniteError(f"{self.name}: embeddings contain NaN or Inf (rows {np.flatnonzero(~np.isfinite(z).all(1))[:5].tolist()})")
        if check_dim and self.dim is not None and z.shape[1] != self.dim:
            raise InvalidInputError(f"{self.name}: expected {self.dim}-dimensional embeddings, got {z.shape[1]}")
        if (np.linalg.norm(z, axis=1) == 0).any():
            raise InvalidInputError(f"{self.name}: embeddings contain all-zero rows, which have no direction to compare")
        return z

    def _check_pair(self, embeddings, user_ids) -> tuple[np.ndarray, np.ndarray]:
        z = self._check_embeddings(embeddings)
        uid = np.asarray(user_ids)
        if uid.ndim != 1 or len(uid) != len(z):
            raise InvalidInputError(f"{self.name}: user_ids must be a 1-D array with one id per embedding "
                                    f"({len(z)}), got shape {uid.shape}")
        if not np.issubdtype(uid.dtype, np.integer) or (uid < 0).any():
            raise InvalidInputError(f"{self.name}: user_ids must be non-negative integers, got dtype {uid.dtype}")
        return z, uid.astype(np.int64)


class KeyedMethod(ProtectionMethod):
    """A method whose transform is parameterised by a per-user secret ("token", "key").

    The stored template and the probe transform of user ``u`` are both fixed by ``user_key(u, dim)``;
    an attacker holding the key applies the same transform by calling :meth:`transform_probe`.
    """

    keyed = True

    def user_key(self, user_id: int, dim: int) -> dict[str, np.ndarray]:
        """The secret of ``user_id`` for ``dim``-dimensional embeddings, as named arrays."""
        if not isinstance(user_id, (int, np.integer)) or user_id < 0:
            raise InvalidInputError(f"{self.name}: user_id must be a non-negative integer, got {user_id!r}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidInputError(f"{self.name}: dim must be a positive integer, got {dim!r}")
        return self._make_key(self._rng(int(user_id)), int(dim))

    @abstractmethod
    def _make_key(self, rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
        """Draw one user's secret from that user's generator."""

    @abstractmethod
    def _apply(self, z: np.ndarray, key: dict[str, np.ndarray]) -> np.ndarray:
        """Transform rows ``z`` (float64, one user's) with that user's key."""

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self._per_user(z, user_ids, lambda rows, u: self._apply(rows, self.user_key(u, z.shape[1])))

    def _probe(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return self._protect(z, user_ids)
