"""Checks every training run shares: hyper-parameters in range before it starts, finite losses while it runs."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from numbers import Integral, Real

import torch

from ..errors import InvalidInputError, NonFiniteError
from .distributed import DistContext, any_rank

_INTERVAL = re.compile(r"([\[(])(\S+), (\S+)([\])])")


def _within(value: object, rule: str, integer: bool) -> bool:
    if rule.endswith(" or None"):
        if value is None:
            return True
        rule = rule[:-len(" or None")]
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real) or not math.isfinite(value):
        return False
    if interval := _INTERVAL.fullmatch(rule):
        low, high = float(interval[2]), float(interval[3])
        return (low <= value if interval[1] == "[" else low < value) and (value <= high if interval[4] == "]" else value < high)
    op, bound = rule.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def check_config(config: object, **rules: str) -> None:
    """Raise :class:`InvalidInputError` naming every field of the dataclass ``config`` that breaks its rule.

    A rule is ``"> 0"``, ``">= 1"`` or an interval such as ``"[0, 1)"``, optionally followed by ``" or None"``;
    the value must be a finite number in that range, and an integer where the field is annotated ``int``.
    """
    annotations = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
                   for f in fields(config)}
    bad = []
    for name, rule in rules.items():
        integer = annotations[name].startswith("int")
        value = getattr(config, name)
        if not _within(value, rule, integer):
            bad.append(f"{name}={value!r} (must be {'an integer' if integer else 'a finite number'} "
                       f"{'in ' if rule[0] in '[(' else ''}{rule})")
    if bad:
        raise InvalidInputError(f"invalid {type(config).__name__}: {'; '.join(bad)}")


def check_finite(losses: dict[str, float], step: int, ctx: DistContext, hint: str,
                 model: torch.nn.Module | None = None) -> None:
    """Raise :class:`NonFiniteError` on every rank (a collective) once any rank's ``losses`` (sums since the last
    check), or ``model``'s weights when given, hold NaN or Inf: the run diverged and must not save anything."""
    bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
    if not bad and model is not None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        bad = ["weights"]
    if any_rank(bool(bad), ctx):
        raise NonFiniteError(f"training diverged: {', '.join(bad) or 'another process'} non-finite by step {step} "
                             f"(not saved; earlier checkpoints are kept); {hint}")
