"""The LFW View-2 verification protocol (``pairs.txt``: 10 folds × 300 same + 300 different)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InvalidInputError


@dataclass
class PairsProtocol:
    """Image pairs as paths relative to the dataset root, with labels and fold numbers (0-based)."""

    left: list[str]
    right: list[str]
    issame: np.ndarray
    folds: np.ndarray
    n_folds: int

    def _fold_mask(self, folds) -> np.ndarray:
        """Pairs in ``folds`` (0-based); a fold this protocol lacks is an error, not an empty selection."""
        folds = list(folds)
        missing = sorted(f for f in folds if not 0 <= f < self.n_folds)
        if missing:
            raise InvalidInputError(f"folds {[f + 1 for f in missing]} (1-based) do not exist: this protocol has "
                                    f"{self.n_folds} folds")
        return np.isin(self.folds, folds)

    def identities_in_folds(self, folds) -> set[str]:
        """Identities appearing in the given folds (LFW's folds are identity-disjoint)."""
        keep = self._fold_mask(folds)
        return {p.split("/")[0] for i in np.flatnonzero(keep) for p in (self.left[i], self.right[i])}

    def select(self, folds) -> "PairsProtocol":
        keep = np.flatnonzero(self._fold_mask(folds))
        return PairsProtocol([self.left[i] for i in keep], [self.right[i] for i in keep],
                             self.issame[keep], self.folds[keep], self.n_folds)


def _image(name: str, number: str, ext: str) -> str:
    return f"{name}/{name}_{int(number):04d}{ext}"


def read_pairs(path: str | Path, ext: str = ".jpg") -> PairsProtocol:
    """Parse an LFW ``pairs.txt``; raises :class:`DataError` on a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pairs file not found: {path}")
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n_folds, n_per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError):
        raise DataError(f"{path}: first line must be '<folds> <pairs per class>', got {lines[:1]}") from None
    body = lines[1:]
    if len(body) != n_folds * 2 * n_per:
        raise DataError(f"{path}: expected {n_folds * 2 * n_per} pairs, found {len(body)}")
    left, right, same = [], [], []
    for i, fields in enumerate(body):
        try:
            if len(fields) == 3:
                left.append(_image(fields[0], fields[1], ext)); right.append(_image(fields[0], fields[2], ext)); same.append(True)
            elif len(fields) == 4:
                left.append(_image(fields[0], fields[1], ext)); right.append(_image(fields[2], fields[3], ext)); same.append(False)
            else:
                raise DataError(f"{path}: line {i + 2} has {len(fields)} fields, expected 3 or 4")
        except ValueError:
            raise DataError(f"{path}: line {i + 2} has a non-numeric image number: {' '.join(fields)}") from None
    folds = np.repeat(np.arange(n_folds), 2 * n_per)
    return PairsProtocol(left, right, np.asarray(same), folds, n_folds)


def pair_indices(dataset, protocol: PairsProtocol) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``dataset`` of each pair's two images."""
    return (np.asarray([dataset.index_of(p) for p in protocol.left]),
            np.asarray([dataset.index_of(p) for p in protocol.right]))


def parse_folds(text: str) -> list[int]:
    """``"6-10"`` or ``"6,7,8"`` (1-based, as in LFW's documentation) → sorted 0-based fold numbers."""
    try:
        out: set[int] = set()
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise InvalidInputError(f"folds must look like '6-10' or '6,7,8', got {text!r}") from None
    if not out or min(out) < 1:
        raise InvalidInputError(f"folds are numbered from 1, got {text!r}")
    return sorted(f - 1 for f in out)
