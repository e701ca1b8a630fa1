"""``mlphash``: MLP-Hash (Shahreza, Krivokuća Hahn & Marcel 2022) — the embedding passes through a
per-user randomly weighted MLP with ReLU hidden layers and the output is binarised at zero;
templates are compared by Hamming similarity."""

from __future__ import annotations

import math

import numpy as np

from facecore.embeddings import l2_normalize
from facecore.errors import InvalidInputError

from .base import KeyedMethod
from .registry import register_method


@register_method
class MLPHash(KeyedMethod):
    """``bits = W_L(relu(... relu(W_1 z))) > 0`` with user-seeded Gaussian weights and no biases.

    ``hidden`` lists the hidden-layer widths; ``n_bits`` is the output width (code length).
    """

    name = "mlphash"
    binary = True

    def __init__(self, hidden: tuple[int, ...] | list[int] = (256,), n_bits: int = 512,
                 seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        hidden = tuple(hidden)
        if not hidden or not all(isinstance(h, (int, np.integer)) and h >= 1 for h in hidden):
            raise InvalidInputError(f"mlphash: hidden must list one or more positive layer widths, got {hidden!r}")
        if not (isinstance(n_bits, (int, np.integer)) and n_bits >= 1):
            raise InvalidInputError(f"mlphash: n_bits must be a positive integer, got {n_bits!r}")
        self.hidden = tuple(int(h) for h in hidden)
        self.n_bits = int(n_bits)

    def _params(self) -> dict:
        return {"hidden": list(self.hidden), "n_bits": self.n_bits}

    def output_dim(self, dim: int) -> int:
        return self.n_bits

    def bytes_per_template(self, dim: int) -> int:
        return math.ceil(self.output_dim(dim) / 8)

    def _make_key(self, rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
        widths = (dim, *self.hidden, self.output_dim(dim))
        return {f"weight{i}": rng.standard_normal((a, b), dtype=np.float32) / np.float32(math.sqrt(a))
                for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}

    def _apply(self, z: np.ndarray, key: dict[str, np.ndarray]) -> np.ndarray:
        h = l2_normalize(z).astype(np.float32)
        weights = [key[f"weight{i}"] for i in range(len(key))]
        for w in weights[:-1]:
            h = np.maximum(h @ w, 0.0)
        return (h @ weights[-1]) > 0
