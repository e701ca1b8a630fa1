"""The loop tail every training run repeats: checkpoint (rank 0 writes, all ranks wait) and time budget.

``EpochTail`` is called once per epoch (the AdvFace loops): checkpoint, then stop once any rank has
used its minutes. ``StepTail`` is called once per optimiser step (the VIGFace loops); it also keeps
loss sums on the device (no host sync per step), writes a history entry every ``log_every`` steps
and checkpoints every ``checkpoint_every`` steps, and stops a diverged run (non-finite losses, or weights
at a checkpoint) with :class:`~facecore.errors.NonFiniteError` before it saves anything.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from tqdm.auto import tqdm

from ._checks import check_finite
from .distributed import DistContext, any_rank, barrier


class TimeBudget:
    """Minutes since construction, and whether any rank has used more than ``max_minutes`` (None: no limit)."""

    def __init__(self, ctx: DistContext, max_minutes: float | None = None):
        self.ctx, self.max_minutes = ctx, max_minutes
        self.start = time.monotonic()

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.start) / 60

    def exceeded(self) -> bool:
        """True on every rank once any rank is out of time (a collective: call it on all ranks)."""
        return any_rank(bool(self.max_minutes) and self.minutes > self.max_minutes, self.ctx)

    def checkpoint(self, save: Callable[..., None], *args) -> None:
        """``save(*args)`` on rank 0 while the other ranks wait."""
        if self.ctx.is_main:
            save(*args)
        barrier(self.ctx)


class EpochTail(TimeBudget):
    """``tail(state)`` at the end of each epoch: ``save(state)`` on rank 0 (when given), all ranks wait;
    returns True when training should stop (out of time)."""

    def __init__(self, ctx: DistContext, max_minutes: float | None = None, save: Callable[[dict], None] | None = None):
        super().__init__(ctx, max_minutes)
        self.save = save

    @staticmethod
    def finish_epoch(state: dict, totals: dict, done: int, steps: int, **record) -> dict:
        """The state after an epoch that ran ``done`` of ``steps`` steps: ``record`` plus the epoch's mean loss
        terms appended to the history. An epoch cut short (out of time) is not counted: its history entry notes its
        steps and ``partial_epoch`` says how far it got (the caller stops without a checkpoint)."""
        entry = {k: v / done for k, v in totals.items()}
        out = {"epoch": state["epoch"] + (done == steps), **record,
               "history": state["history"] + [entry if done == steps else {**entry, "steps": done}]}
        if done < steps:
            out["partial_epoch"] = f"{done}/{steps} steps"
        return out

    def __call__(self, state: dict) -> bool:
        if self.save is not None:
            self.checkpoint(self.save, state)
        else:
            barrier(self.ctx)
        return self.exceeded()


class StepTail(TimeBudget):
    """``tail(loss_terms)`` after each optimiser step; returns True when training should stop.

    Before each history entry and checkpoint, and at the end, the loss sums must be finite (and ``model``'s
    weights, when given, before a checkpoint and at the end), else :class:`NonFiniteError` ending in ``hint``.
    """

    def __init__(self, ctx: DistContext, total_steps: int, start_step: int, history: list, desc: str,
                 log_every: int = 50, checkpoint_every: int = 500, max_minutes: float | None = None,
                 save: Callable[[int], None] | None = None, progress: bool = True, model: torch.nn.Module | None = None,
                 hint: str = "lower the learning rate or check the data"):
        super().__init__(ctx, max_minutes)
        self.total, self.step, self.history = total_steps, start_step, history
        self.log_every, self.checkpoint_every, self.save = log_every, checkpoint_every, save
        self.model, self.hint = model, hint
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", disable=not (progress and ctx.is_main))

    def __call__(self, terms: dict[str, torch.Tensor]) -> bool:
        """Record one finished step's loss terms; returns True when training should stop."""
        self.step += 1
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.count += 1
        self.bar.update(1)
        stop = self.exceeded() or self.step >= self.total
        log = self.step % self.log_every == 0 or stop
        save = self.save is not None and (self.step % self.checkpoint_every == 0 or stop)
        if log or save:
            check_finite({k: float(v) for k, v in self.sums.items()}, self.step, self.ctx, self.hint,
                         self.model if save or stop else None)
        if log:
            entry = {"step": self.step, "minutes": round(self.minutes, 3),
                     **{k: round(float(v) / self.count, 6) for k, v in self.sums.items()}}
            self.history.append(entry)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in entry.items() if k not in ("step", "minutes")})
            self.sums, self.count = {}, 0
        if save:
            self.checkpoint(self.save, self.step)
        if stop:
            self.bar.close()
        return stop
