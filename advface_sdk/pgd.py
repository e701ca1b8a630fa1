"""Per-sample PGD reference: optimise δ for each embedding directly (slow; for comparison)."""

from __future__ import annotations

from typing import Sequence

import torch

from .training.generator import GeneratorTrainConfig, adversarial_losses, total_loss


def pgd_protect(z: torch.Tensor, labels: torch.Tensor, images: torch.Tensor | None, shadow: torch.nn.Module,
                recognizer: torch.nn.Module | None, config: GeneratorTrainConfig, steps: int = 50,
                step_size: float | None = None, prior: "torch.nn.Module | Sequence[torch.nn.Module] | None" = None,
                start: torch.Tensor | None = None) -> torch.Tensor:
    """Protected embeddings ``(û + δ)·‖z‖`` with ``δ ⟂ ẑ``, ``‖δ‖₂ = budget`` found by projected gradient descent
    on the same objective the generator is trained with (pixel term skipped when ``images`` is None).
    ``prior``: a face prior as a second shadow (:class:`~advface_sdk.models.decoders.PriorShadow`), or a list of
    them (an ensemble: their terms averaged);
    ``start``: protected embeddings to start from (e.g. a generator's output) instead of a random δ."""
    shadow = shadow.eval().requires_grad_(False)
    norm = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    unit = z / norm
    step_size = step_size or 2.5 * config.budget / steps
    delta = torch.randn_like(unit) if start is None else start / norm - unit
    delta = delta - (delta * unit).sum(1, keepdim=True) * unit
    delta = (delta / delta.norm(dim=1, keepdim=True) * config.budget).requires_grad_(True)
    cfg = config if images is not None else GeneratorTrainConfig(**{**config.__dict__, "pixel_weight": 0.0})
    size = shadow.config["size"]
    imgs = images if images is not None else torch.zeros(len(z), 3, size, size, device=z.device)
    for _ in range(steps):
        terms = adversarial_losses((unit + delta) * norm, z, labels, imgs, shadow, recognizer, cfg, prior=prior)
        grad, = torch.autograd.grad(total_loss(terms, cfg), delta)
        with torch.no_grad():
            delta -= step_size * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta -= (delta * unit).sum(1, keepdim=True) * unit  # same constraint set as the generator
            delta *= config.budget / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)  # back onto the sphere
    return ((unit + delta.detach()) * norm).detach()
