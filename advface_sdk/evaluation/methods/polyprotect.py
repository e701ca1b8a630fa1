"""``polyprotect``: PolyProtect (Hahn & Marcel, "Towards protecting face embeddings in mobile face
verification scenarios", IEEE T-BIOM 2022).

Each window of ``m`` consecutive elements of the (L2-normalised) embedding ``V`` is mapped to
``p = sum_i c_i * v_i ** e_i``; successive windows share ``overlap`` elements and ``V`` is
zero-padded to complete the last window, so the template has ``ceil((D - o) / (m - o))`` values.
The user key is ``m`` distinct non-zero integer coefficients in ``[-coef_max, coef_max]`` and a
permutation of the exponents ``1..m``.  Probes go through the same user's mapping; templates are
compared by cosine similarity, as in the paper.
"""

from __future__ import annotations

import math

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError

from .base import KeyedMethod
from .registry import register_method


@register_method
class PolyProtect(KeyedMethod):
    """Per-user multivariate-polynomial mapping of overlapping embedding windows."""

    name = "polyprotect"

    def __init__(self, m: int = 5, overlap: int = 4, coef_max: int = 50, seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        if not (isinstance(m, (int, np.integer)) and m >= 2):
            raise InvalidInputError(f"polyprotect: window size m must be an integer >= 2, got {m!r}")
        if not (isinstance(overlap, (int, np.integer)) and 0 <= overlap < m):
            raise InvalidInputError(f"polyprotect: overlap must be an integer in [0, m-1] = [0, {m - 1}], got {overlap!r}")
        if not (isinstance(coef_max, (int, np.integer)) and 2 * coef_max >= m):
            raise InvalidInputError(f"polyprotect: coef_max must allow {m} distinct non-zero coefficients, got {coef_max!r}")
        self.m, self.overlap, self.coef_max = int(m), int(overlap), int(coef_max)

    def _params(self) -> dict:
        return {"m": self.m, "overlap": self.overlap, "coef_max": self.coef_max}

    def output_dim(self, dim: int) -> int:
        return max(1, math.ceil((dim - self.overlap) / (self.m - self.overlap)))

    def bytes_per_template(self, dim: int) -> int:
        return 4 * self.output_dim(dim)

    def _make_key(self, rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
        nonzero = np.concatenate([np.arange(-self.coef_max, 0), np.arange(1, self.coef_max + 1)])
        return {"coefficients": rng.choice(nonzero, self.m, replace=False).astype(np.int64),
                "exponents": rng.permutation(np.arange(1, self.m + 1)).astype(np.int64)}

    def _apply(self, z: np.ndarray, key: dict[str, np.ndarray]) -> np.ndarray:
        v = l2_normalize(z)
        step, k = self.m - self.overlap, self.output_dim(z.shape[1])
        padded = np.zeros((len(v), (k - 1) * step + self.m))
        padded[:, : v.shape[1]] = v
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.m, axis=1)[:, ::step]  # (N, k, m)
        return np.sum(key["coefficients"] * windows ** key["exponents"], axis=2).astype(np.float32)
