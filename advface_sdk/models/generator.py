"""The AdvFace noise generator ``G(z) → δ`` and the full protection graph ``z ↦ (ẑ + δ(ẑ))·‖z‖``."""

from __future__ import annotations

import torch
from torch import nn

from facecore.errors import InvalidInputError


class NoiseGenerator(nn.Module):
    """Small MLP producing adversarial latent noise on unit embeddings: ``δ ⟂ ẑ`` with ``‖δ‖₂ = budget``.

    Noise along ``ẑ`` only rescales the embedding, which cosine matching and reconstruction both
    ignore, so the whole budget is spent orthogonally; every protected template then has the same
    cosine ``1/√(1 + budget²)`` to its clean version.

    ``forward`` maps raw embeddings ``(N, dim)`` to protected embeddings of the same norm scale,
    so it is the whole protection graph that is exported to ONNX / TensorRT.
    """

    def __init__(self, dim: int, hidden: int = 256, budget: float = 0.5):
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise InvalidInputError(f"dim and hidden must be positive, got {dim}, {hidden}")
        if not 0 < budget < 2:
            raise InvalidInputError(f"noise budget is an L2 norm on unit embeddings and must lie in (0, 2), got {budget}")
        self.config = {"dim": int(dim), "hidden": int(hidden), "budget": float(budget)}
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    @property
    def dim(self) -> int:
        return self.config["dim"]

    @property
    def budget(self) -> float:
        return self.config["budget"]

    def noise(self, unit_z: torch.Tensor) -> torch.Tensor:
        """δ for unit-norm embeddings: the MLP's direction projected orthogonal to ``ẑ``, length ``budget``."""
        r = self.net(unit_z)
        r = r - (r * unit_z).sum(dim=1, keepdim=True) * unit_z
        return r * (self.budget / torch.sqrt((r * r).sum(dim=1, keepdim=True) + 1e-12))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        norm = torch.sqrt((z * z).sum(dim=1, keepdim=True))
        unit = z / torch.clamp(norm, min=1e-12)
        return (unit + self.noise(unit)) * norm
