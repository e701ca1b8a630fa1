"""Margin-softmax heads (ArcFace, CosFace) over ``n`` real plus ``k`` virtual identity prototypes.

Virtual prototypes are trained the VIGFace way (Kim et al., 2024): each step adds fake embeddings
``w_v + σ·ε`` of virtual classes, where ``σ`` is the per-dimension spread of the real (normalised)
embeddings around their prototypes, smoothed by an EMA. The fake samples see the real prototypes
as constants, so their loss moves only the virtual rows: away from every real identity and from
each other, while the real samples' loss also pushes the virtual rows away from real faces.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facecore.errors import InvalidInputError

MARGINS = {"arcface": 0.5, "cosface": 0.35}


def margin_logits(cosine: torch.Tensor, labels: torch.Tensor, kind: str = "arcface", margin: float = 0.5,
                  scale: float = 64.0) -> torch.Tensor:
    """Scaled logits with the additive margin applied to each row's target class.

    ArcFace: ``s·cos(θ + m)`` (insightface's fallback ``cos θ − m·sin m`` once ``θ + m > π``);
    CosFace: ``s·(cos θ − m)``; every other class keeps ``s·cos θ``.
    """
    if kind not in MARGINS:
        raise InvalidInputError(f"margin type must be one of {sorted(MARGINS)}, got {kind!r}")
    cosine = cosine.clamp(-1.0, 1.0)
    target = cosine.gather(1, labels[:, None])
    if kind == "arcface":
        sin = torch.sqrt((1.0 - target * target).clamp_min(1e-6))  # finite gradient at cos θ = ±1
        shifted = target * math.cos(margin) - sin * math.sin(margin)
        fallback = target - math.sin(math.pi - margin) * margin
        shifted = torch.where(target > math.cos(math.pi - margin), shifted, fallback)
    else:
        shifted = target - margin
    return scale * cosine.scatter(1, labels[:, None], shifted)


class VirtualMarginHead(nn.Module):
    """Prototype matrix of ``num_real`` real then ``num_virtual`` virtual rows with a margin-softmax loss.

    ``forward(embeddings, labels)`` (labels index the real rows) returns the mean loss over the real
    samples and about ``k·b/n`` fake virtual samples, plus the parts for logging.
    """

    def __init__(self, dim: int, num_real: int, num_virtual: int, kind: str = "arcface", margin: float | None = None,
                 scale: float = 64.0, sigma_momentum: float = 0.9):
        super().__init__()
        if kind not in MARGINS:
            raise InvalidInputError(f"margin type must be one of {sorted(MARGINS)}, got {kind!r}")
        if dim < 1 or num_real < 1 or num_virtual < 0:
            raise InvalidInputError(f"need dim >= 1, num_real >= 1, num_virtual >= 0; got {dim}, {num_real}, {num_virtual}")
        if not 0 <= sigma_momentum < 1:
            raise InvalidInputError(f"sigma_momentum must lie in [0, 1), got {sigma_momentum}")
        self.dim, self.num_real, self.num_virtual = int(dim), int(num_real), int(num_virtual)
        self.kind = kind
        self.margin = float(MARGINS[kind] if margin is None else margin)
        self.scale = float(scale)
        self.sigma_momentum = float(sigma_momentum)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_real + num_virtual, dim), dim=1))
        self.register_buffer("sigma", torch.zeros(dim))
        self.register_buffer("sigma_ready", torch.zeros((), dtype=torch.bool))

    def config(self) -> dict:
        return {"dim": self.dim, "num_real": self.num_real, "num_virtual": self.num_virtual, "margin_type": self.kind,
                "margin": self.margin, "scale": self.scale, "sigma_momentum": self.sigma_momentum}

    @torch.no_grad()
    def init_real(self, centers: torch.Tensor) -> None:
        """Start the real rows at given class centres (e.g. mean embeddings of a frozen backbone)."""
        if centers.shape != (self.num_real, self.dim):
            raise InvalidInputError(f"centers must have shape {(self.num_real, self.dim)}, got {tuple(centers.shape)}")
        self.weight[: self.num_real] = F.normalize(centers.to(self.weight), dim=1)

    @torch.no_grad()
    def init_virtual(self, virtual: torch.Tensor, sigma: torch.Tensor | None = None) -> None:
        """Start the virtual rows (and σ, if given) from a previous space."""
        if virtual.shape != (self.num_virtual, self.dim):
            raise InvalidInputError(f"virtual prototypes must have shape {(self.num_virtual, self.dim)}, "
                                    f"got {tuple(virtual.shape)}")
        self.weight[self.num_real:] = F.normalize(virtual.to(self.weight), dim=1)
        if sigma is not None:
            self.sigma.copy_(sigma.to(self.sigma).reshape(self.dim))
            self.sigma_ready.fill_(True)

    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm ``(real (n, D), virtual (k, D))`` as float32 numpy arrays."""
        w = F.normalize(self.weight.detach().float().cpu(), dim=1).numpy()
        return w[: self.num_real].copy(), w[self.num_real:].copy()

    def num_fakes(self, batch: int) -> int:
        """About ``k·b/n`` fake virtual samples per batch of ``b`` real ones (at least one when ``k > 0``)."""
        if self.num_virtual == 0:
            return 0
        return max(1, round(self.num_virtual * batch / self.num_real))

    @torch.no_grad()
    def _update_sigma(self, x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor) -> None:
        resid = x.detach() - w.detach()[labels]
        stats = torch.cat([resid.pow(2).sum(0), resid.new_tensor([len(resid)])])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)  # every rank gets the same σ
        batch_sigma = (stats[:-1] / stats[-1]).sqrt()
        if bool(self.sigma_ready):
            self.sigma.mul_(self.sigma_momentum).add_(batch_sigma, alpha=1 - self.sigma_momentum)
        else:
            self.sigma.copy_(batch_sigma)
            self.sigma_ready.fill_(True)

    def fake_loss(self, count: int) -> torch.Tensor:
        """Summed loss of ``count`` fake virtual samples; its gradient reaches only the virtual rows."""
        w = F.normalize(self.weight, dim=1)
        classes = torch.randint(self.num_virtual, (count,), device=w.device)
        noise = torch.randn(count, self.dim, device=w.device, dtype=w.dtype) * self.sigma.to(w.dtype)
        fakes = F.normalize(w[self.num_real + classes] + noise, dim=1)
        protos = torch.cat([w[: self.num_real].detach(), w[self.num_real:]])
        logits = margin_logits(fakes @ protos.t(), self.num_real + classes, self.kind, self.margin, self.scale)
        return F.cross_entropy(logits, self.num_real + classes, reduction="sum")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise InvalidInputError(f"embeddings must have shape (N, {self.dim}), got {tuple(embeddings.shape)}")
        x = F.normalize(embeddings, dim=1)
        w = F.normalize(self.weight, dim=1)
        if self.training:
            self._update_sigma(x, w, labels)
        cosine = x @ w.t()
        logits = margin_logits(cosine, labels, self.kind, self.margin, self.scale)
        real = F.cross_entropy(logits, labels, reduction="sum")
        fakes = self.num_fakes(len(x)) if self.training else 0
        fake = self.fake_loss(fakes) if fakes else real.new_zeros(())
        with torch.no_grad():
            accuracy = (cosine.argmax(1) == labels).float().mean()
        return {"loss": (real + fake) / (len(x) + fakes), "real": real.detach() / len(x),
                "virtual": fake.detach() / max(fakes, 1), "accuracy": accuracy}
