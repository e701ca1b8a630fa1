"""``gaussian``: additive isotropic noise of a fixed relative size, compared with clean probes."""

from __future__ import annotations

import numpy as np

from facecore.errors import InvalidInputError

from .base import ProtectionMethod
from .registry import register_method


@register_method
class GaussianNoise(ProtectionMethod):
    """Stores ``z + delta`` with a Gaussian direction and ``||delta|| = budget * ||z||``.

    The noise direction is drawn per user from ``(seed, user_id)``; probes stay clean.
    Set ``budget`` to the relative perturbation size of the AdvFace model being compared.
    """

    name = "gaussian"

    def __init__(self, budget: float = 0.5, seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        if not np.isfinite(budget) or budget < 0:
            raise InvalidInputError(f"gaussian: budget must be a finite non-negative number, got {budget!r}")
        self.budget = float(budget)

    def _params(self) -> dict:
        return {"budget": self.budget}

    def output_dim(self, dim: int) -> int:
        return dim

    def bytes_per_template(self, dim: int) -> int:
        return 4 * dim

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        def noisy(rows: np.ndarray, uid: int) -> np.ndarray:
            g = self._rng(uid).standard_normal(rows.shape[1])
            delta = g / np.linalg.norm(g) * (self.budget * np.linalg.norm(rows, axis=1, keepdims=True))
            return (rows + delta).astype(np.float32)

        return self._per_user(z, user_ids, noisy)
