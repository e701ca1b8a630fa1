"""Exponential moving average of model weights (the weights a diffusion pipeline samples with)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMAModel:
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` after every optimizer step.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so early weights are not frozen in.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], step: int) -> None:
        self.model.load_state_dict(state)
        self.step = int(step)
