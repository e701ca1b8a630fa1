"""``none``: the unprotected baseline — raw embeddings, cosine similarity."""

from __future__ import annotations

import numpy as np

from .base import ProtectionMethod
from .registry import register_method


@register_method
class NoProtection(ProtectionMethod):
    """Stores the raw float32 embedding."""

    name = "none"

    def output_dim(self, dim: int) -> int:
        return dim

    def bytes_per_template(self, dim: int) -> int:
        return 4 * dim

    def _protect(self, z: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        return z.astype(np.float32)
