"""``slerpface``: SlerpFace-style protection (Zhong et al., "SlerpFace: Face Template Protection via
Spherical Linear Interpolation", AAAI 2025).

The unit template ``t`` is rotated on the hypersphere toward a per-user random key ``k`` by
spherical linear interpolation, ``p = sin((1-a)θ)/sinθ · t + sin(aθ)/sinθ · k`` (θ = angle(t, k)),
then its dimensions are divided into ``groups`` equal groups by a per-user permutation and a
per-user random share ``drop`` of the groups is removed.  Probes of the claimed user go through
the same rotation and dropout; templates are compared by cosine over the kept dimensions.
The paper learns the group division and dropout; here both are random per user.
"""

from __future__ import annotations

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError

from .base import KeyedMethod
from .registry import register_method


@register_method
class SlerpFace(KeyedMethod):
    """Slerp toward a user key by fraction ``alpha``, then drop ``drop`` of ``groups`` dimension groups."""

    name = "slerpface"

    def __init__(self, alpha: float = 0.8, groups: int = 16, drop: float = 0.25,
                 seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        if not (np.isfinite(alpha) and 0 <= alpha < 1):
            raise InvalidInputError(f"slerpface: alpha must be in [0, 1), got {alpha!r}")
        if not (isinstance(groups, (int, np.integer)) and groups >= 1):
            raise InvalidInputError(f"slerpface: groups must be a positive integer, got {groups!r}")
        if not (np.isfinite(drop) and 0 <= drop < 1):
            raise InvalidInputError(f"slerpface: drop must be in [0, 1), got {drop!r}")
        self.alpha, self.groups, self.drop = float(alpha), int(groups), float(drop)

    def _params(self) -> dict:
        return {"alpha": self.alpha, "groups": self.groups, "drop": self.drop}

    def _n_kept(self) -> int:
        return self.groups - int(round(self.drop * self.groups))

    def output_dim(self, dim: int) -> int:
        if dim % self.groups:
            raise InvalidInputError(f"slerpface: the embedding size {dim} is not divisible into {self.groups} groups; "
                                    f"choose groups among the divisors of {dim}")
        return self._n_kept() * (dim // self.groups)

    def bytes_per_template(self, dim: int) -> int:
        return 4 * self.output_dim(dim)

    def _make_key(self, rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
        size = dim // self.groups
        self.output_dim(dim)  # validates the group size
        key = rng.standard_normal(dim)
        order = rng.permutation(dim).reshape(self.groups, size)
        kept = np.sort(rng.choice(self.groups, self._n_kept(), replace=False))
        return {"key": key / np.linalg.norm(key), "kept_dims": order[kept].ravel()}

    def _apply(self, z: np.ndarray, key: dict[str, np.ndarray]) -> np.ndarray:
        t, k = l2_normalize(z), key["key"]
        theta = np.arccos(np.clip(t @ k, -1.0, 1.0))[:, None]
        sin = np.maximum(np.sin(theta), 1e-12)
        p = np.sin((1 - self.alpha) * theta) / sin * t + np.sin(self.alpha * theta) / sin * k
        return p[:, key["kept_dims"]].astype(np.float32)
