"""``biohashing``: BioHashing (Teoh, Ngo & Goh 2004) — a per-user random orthonormal projection
binarised at zero, compared by Hamming similarity."""

from __future__ import annotations

import math

import numpy as np
import torch

from facecore.errors import InvalidInputError

from .base import KeyedMethod
from .registry import register_method


@register_method
class BioHashing(KeyedMethod):
    """``bits = (z @ Q) > 0`` with ``Q`` (D, n_bits) from the QR decomposition of a user-seeded Gaussian matrix.

    ``n_bits`` defaults to the embedding size and cannot exceed it (orthonormal columns).
    """

    name = "biohashing"
    binary = True

    def __init__(self, n_bits: int | None = None, seed: int = 0, dim: int | None = None) -> None:
        super().__init__(seed, dim)
        if n_bits is not None and not (isinstance(n_bits, (int, np.integer)) and n_bits >= 1):
            raise InvalidInputError(f"biohashing: n_bits must be a positive integer or None, got {n_bits!r}")
        self.n_bits = None if n_bits is None else int(n_bits)

    def _params(self) -> dict:
        return {"n_bits": self.n_bits}

    def output_dim(self, dim: int) -> int:
        bits = dim if self.n_bits is None else self.n_bits
        if bits > dim:
            raise InvalidInputError(f"biohashing: n_bits={bits} exceeds the embedding size {dim}; "
                                    "an orthonormal projection has at most D directions")
        return bits

    def bytes_per_template(self, dim: int) -> int:
        return math.ceil(self.output_dim(dim) / 8)

    def _make_key(self, rng: np.random.Generator, dim: int) -> dict[str, np.ndarray]:
        g = torch.from_numpy(rng.standard_normal((dim, self.output_dim(dim)), dtype=np.float32))
        # one thread: small QRs stall badly when BLAS threads compete for a busy CPU
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            q, r = torch.linalg.qr(g)
        finally:
            torch.set_num_threads(threads)
        return {"projection": (q * torch.sign(torch.diagonal(r))).numpy()}  # sign fix: Haar-distributed basis

    def _apply(self, z: np.ndarray, key: dict[str, np.ndarray]) -> np.ndarray:
        return (z.astype(np.float32) @ key["projection"]) > 0
