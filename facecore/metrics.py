"""Face verification metrics following the arcface_torch / insightface LFW protocol."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError


def _check(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, np.float64).ravel()
    issame = np.asarray(issame, bool).ravel()
    if scores.shape != issame.shape or scores.size == 0:
        raise InvalidInputError(f"scores and labels must be non-empty and of equal length, got {scores.shape} and {issame.shape}")
    if not np.isfinite(scores).all():
        raise InvalidInputError("similarity scores contain NaN or Inf")
    return scores, issame


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``(N, D)`` arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def accuracy_at(scores: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    """Share of pairs classified right by ``score > threshold`` ⇒ same."""
    return float(np.mean((scores > threshold) == issame))


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
    """Threshold maximising accuracy (over midpoints between sorted scores)."""
    scores, issame = _check(scores, issame)
    s = np.unique(scores)
    cands = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    # vectorised accuracy for every candidate
    order = np.argsort(scores)
    ss, ll = scores[order], issame[order]
    pos_below = np.searchsorted(ss, cands, side="right")
    cum_pos = np.concatenate([[0], np.cumsum(ll)])
    n_pos = ll.sum()
    tp = n_pos - cum_pos[pos_below]
    tn = pos_below - cum_pos[pos_below]
    acc = (tp + tn) / len(ss)
    return float(cands[int(np.argmax(acc))])


@dataclass
class KFoldResult:
    accuracy: float
    std: float
    thresholds: np.ndarray
    fold_accuracies: np.ndarray

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "std": self.std, "threshold_mean": float(self.thresholds.mean()),
                "fold_accuracies": self.fold_accuracies.tolist()}


def kfold_accuracy(scores, issame, folds=None, n_folds: int = 10) -> KFoldResult:
    """10-fold accuracy: each fold's threshold is chosen on the other folds (mean ± std).

    ``folds`` gives each pair's fold (as in LFW's ``pairs.txt``); without it pairs are split
    into ``n_folds`` contiguous folds like arcface_torch's ``KFold(shuffle=False)``.
    """
    scores, issame = _check(scores, issame)
    if folds is None:
        folds = np.repeat(np.arange(n_folds), int(np.ceil(len(scores) / n_folds)))[: len(scores)]
    folds = np.asarray(folds)
    names = np.unique(folds)
    if len(names) < 2:
        raise InvalidInputError("k-fold accuracy needs at least two folds")
    accs, ths = [], []
    for f in names:
        test = folds == f
        th = best_threshold(scores[~test], issame[~test])
        ths.append(th)
        accs.append(accuracy_at(scores[test], issame[test], th))
    accs = np.asarray(accs)
    return KFoldResult(float(accs.mean()), float(accs.std()), np.asarray(ths), accs)


def roc_curve(scores, issame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(far, tar, thresholds)`` with thresholds descending (accept if ``score >= threshold``)."""
    scores, issame = _check(scores, issame)
    if issame.all() or not issame.any():
        raise InvalidInputError("ROC needs both genuine and impostor pairs")
    order = np.argsort(-scores, kind="stable")
    s, l = scores[order], issame[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(l)[distinct]
    fp = np.cumsum(~l)[distinct]
    tar = np.r_[0.0, tp / l.sum()]
    far = np.r_[0.0, fp / (~l).sum()]
    return far, tar, np.r_[np.inf, s[distinct]]


def threshold_at_far(impostor_scores, far: float) -> float:
    """Smallest threshold whose false-accept rate (score > threshold) is at most ``far``."""
    imp = np.sort(np.asarray(impostor_scores, np.float64).ravel())[::-1]
    if imp.size == 0:
        raise InvalidInputError("need impostor scores to set a threshold")
    if not np.isfinite(imp).all():
        raise InvalidInputError("impostor scores contain NaN or Inf")
    if not 0 <= far <= 1:
        raise InvalidInputError(f"far must lie in [0, 1], got {far}")
    k = int(np.floor(far * imp.size))  # number of impostors allowed above the threshold
    return float(imp[min(k, imp.size - 1)])


def tar_at_far(scores, issame, fars=(1e-2, 1e-3, 1e-4)) -> dict[str, float]:
    """True-accept rate at each false-accept rate (threshold from the impostor scores).

    With fewer than ``1/far`` impostor pairs the threshold is the maximum impostor score,
    so the value is an upper bound on the FAR actually reached; ``n_impostors`` is returned.
    """
    scores, issame = _check(scores, issame)
    gen, imp = scores[issame], scores[~issame]
    out = {f"tar@far={f:g}": float(np.mean(gen > threshold_at_far(imp, f))) for f in fars}
    out["n_impostors"] = int(imp.size)
    return out


def verification_report(scores, issame, folds=None) -> dict:
    """k-fold accuracy plus TAR at FAR 1e-2/1e-3/1e-4, as a JSON-ready dict."""
    res = kfold_accuracy(scores, issame, folds)
    return {**res.to_dict(), **tar_at_far(scores, issame)}
