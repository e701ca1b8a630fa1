"""Identity-disjoint splits."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError


def identity_split(identities, fractions: dict[str, float], seed: int = 0, exclude=()) -> dict[str, list[str]]:
    """Split identity names into disjoint named groups by fraction (seeded shuffle).

    ``exclude`` names are kept out of every group (e.g. evaluation identities).
    """
    total = sum(fractions.values())
    if not fractions or total <= 0 or total > 1 + 1e-9 or min(fractions.values()) < 0:
        raise InvalidInputError(f"fractions must be non-negative and sum to at most 1, got {fractions}")
    names = sorted(set(identities) - set(exclude))
    order = np.random.default_rng(seed).permutation(len(names))
    out, start = {}, 0
    for key, frac in fractions.items():
        count = int(round(frac * len(names)))
        out[key] = sorted(names[i] for i in order[start : start + count])
        start += count
    return out
