"""The step loop's tail every training run repeats: running means, log, checkpoint, time budget.

``StepTail`` is called once per optimiser step; it keeps loss sums on the device (no host sync per
step), writes a history entry every ``log_every`` steps, checkpoints every ``checkpoint_every``
steps (rank 0 writes, all ranks wait), and tells every rank to stop once any has used its minutes.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from .distributed import DistContext, any_rank, barrier


class StepTail:
    def __init__(self, ctx: DistContext, total_steps: int, start_step: int, history: list, desc: str,
                 log_every: int = 50, checkpoint_every: int = 500, max_minutes: float | None = None,
                 save: Callable[[int], None] | None = None, progress: bool = True):
        self.ctx, self.total, self.step, self.history = ctx, total_steps, start_step, history
        self.log_every, self.checkpoint_every, self.max_minutes, self.save = log_every, checkpoint_every, max_minutes, save
        self.start = time.monotonic()
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", disable=not (progress and ctx.is_main))

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60

    def __call__(self, terms: dict[str, torch.Tensor]) -> bool:
        """Record one finished step's loss terms; returns True when training should stop."""
        self.step += 1
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.count += 1
        self.bar.update(1)
        out_of_time = bool(self.max_minutes) and self.minutes > self.max_minutes
        stop = any_rank(out_of_time, self.ctx) or self.step >= self.total
        if self.step % self.log_every == 0 or stop:
            entry = {"step": self.step, "minutes": round(self.minutes, 3),
                     **{k: round(float(v) / self.count, 6) for k, v in self.sums.items()}}
            self.history.append(entry)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k not in ("step", "minutes")})
            self.sums, self.count = {}, 0
        if self.save is not None and (self.step % self.checkpoint_every == 0 or stop):
            if self.ctx.is_main:
                self.save(self.step)
            barrier(self.ctx)
        if stop:
            self.bar.close()
        return stop
