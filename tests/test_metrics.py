"""Verification metrics on tiny arrays whose answers can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from facecore.errors import InvalidInputError
from facecore.metrics import (
    accuracy_at,
    best_threshold,
    cosine_scores,
    kfold_accuracy,
    roc_curve,
    tar_at_far,
    threshold_at_far,
    verification_report,
)


def test_cosine_scores_by_hand():
    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [6.0, 8.0], [-1.0, -1.0]])
    np.testing.assert_allclose(cosine_scores(a, b), [0.0, 1.0, -1.0], atol=1e-12)


def test_best_threshold_separable():
    # sorted: 0.1 diff, 0.35 diff | 0.4 same, 0.8 same -> the cut is the midpoint 0.375
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    issame = np.array([False, True, False, True])
    th = best_threshold(scores, issame)
    assert th == pytest.approx(0.375)
    assert accuracy_at(scores, issame, th) == 1.0


def test_best_threshold_not_separable():
    # sorted: 0.1 N, 0.45 P, 0.55 N, 0.9 P. Cuts give 2/4, 3/4, 2/4, 3/4, 2/4: the first best is (0.1+0.45)/2
    scores = np.array([0.45, 0.9, 0.55, 0.1])
    issame = np.array([True, True, False, False])
    th = best_threshold(scores, issame)
    assert th == pytest.approx(0.275)
    assert accuracy_at(scores, issame, th) == 0.75


def test_best_threshold_all_one_class():
    # only genuine pairs: the best threshold accepts all of them
    scores = np.array([0.2, 0.5, 0.7])
    th = best_threshold(scores, np.ones(3, bool))
    assert th < 0.2 and accuracy_at(scores, np.ones(3, bool), th) == 1.0


# Two folds. Fold 0 is separable (own best threshold 0.5 gives 4/4); fold 1 is not (own best 0.275 gives 3/4).
# Honest k-fold: fold 0 is scored with fold 1's threshold 0.275 -> 0.3 (diff) accepted -> 3/4;
# fold 1 is scored with fold 0's threshold 0.5 -> 0.55 (diff) accepted and 0.45 (same) rejected -> 2/4.
KF_SCORES = np.array([0.8, 0.7, 0.2, 0.3, 0.45, 0.9, 0.55, 0.1])
KF_SAME = np.array([True, True, False, False, True, True, False, False])
KF_FOLDS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_kfold_threshold_chosen_on_other_folds():
    res = kfold_accuracy(KF_SCORES, KF_SAME, KF_FOLDS)
    np.testing.assert_allclose(res.thresholds, [0.275, 0.5])
    np.testing.assert_allclose(res.fold_accuracies, [0.75, 0.5])
    assert res.accuracy == pytest.approx(0.625)
    assert res.std == pytest.approx(0.125)
    # choosing each threshold on the test fold itself would report more: (1.0 + 0.75) / 2
    cheat = np.mean([accuracy_at(KF_SCORES[KF_FOLDS == f], KF_SAME[KF_FOLDS == f],
                                 best_threshold(KF_SCORES[KF_FOLDS == f], KF_SAME[KF_FOLDS == f])) for f in (0, 1)])
    assert cheat == pytest.approx(0.875) and res.accuracy < cheat


def test_kfold_default_contiguous_folds():
    # without folds, pairs are split into n_folds contiguous blocks: same answer as the explicit folds above
    res = kfold_accuracy(KF_SCORES, KF_SAME, n_folds=2)
    np.testing.assert_allclose(res.fold_accuracies, [0.75, 0.5])
    d = res.to_dict()
    assert d["accuracy"] == pytest.approx(0.625) and d["threshold_mean"] == pytest.approx(0.3875)
    assert d["fold_accuracies"] == pytest.approx([0.75, 0.5])


def test_kfold_perfect_separation():
    rng = np.random.default_rng(0)
    issame = np.tile([True, False], 50)
    scores = np.where(issame, rng.uniform(0.6, 1.0, 100), rng.uniform(-0.2, 0.4, 100))
    res = kfold_accuracy(scores, issame, n_folds=10)
    assert res.accuracy == 1.0 and res.std == 0.0
    assert np.all((res.thresholds > 0.4) & (res.thresholds < 0.6))


def test_roc_curve_by_hand():
    # descending: 0.9 P, 0.8 N, 0.7 P, 0.6 N
    far, tar, th = roc_curve([0.6, 0.7, 0.8, 0.9], [False, True, False, True])
    np.testing.assert_allclose(far, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(th, [np.inf, 0.9, 0.8, 0.7, 0.6])


def test_roc_curve_ties_and_monotonic():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=300), 1)  # many ties
    issame = rng.random(300) < 0.4
    far, tar, th = roc_curve(scores, issame)
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0) and np.all(np.diff(th) < 0)
    assert len(th) == len(np.unique(scores)) + 1
    # each point is the rate of pairs accepted by score >= threshold
    for i in (1, len(th) // 2, len(th) - 1):
        assert tar[i] == pytest.approx(np.mean(scores[issame] >= th[i]))
        assert far[i] == pytest.approx(np.mean(scores[~issame] >= th[i]))


IMPOSTORS = np.arange(1, 11) / 10.0  # 0.1 ... 1.0


@pytest.mark.parametrize("far, expected", [(0.1, 0.9), (0.25, 0.8), (0.5, 0.5), (1e-3, 1.0)])
def test_threshold_at_far_by_hand(far, expected):
    th = threshold_at_far(IMPOSTORS, far)
    assert th == pytest.approx(expected)
    assert np.mean(IMPOSTORS > th) <= far


def test_threshold_at_far_with_ties_stays_conservative():
    th = threshold_at_far([0.5, 0.5, 0.5, 0.1], 0.25)
    assert th == 0.5 and np.mean(np.array([0.5, 0.5, 0.5, 0.1]) > th) == 0.0


def test_tar_at_far_by_hand():
    genuine = np.array([0.95, 0.85, 0.5, 0.3])
    scores = np.concatenate([genuine, IMPOSTORS])
    issame = np.r_[np.ones(4, bool), np.zeros(10, bool)]
    out = tar_at_far(scores, issame, fars=(0.1, 0.25, 1e-3))
    assert out == {"tar@far=0.1": 0.25, "tar@far=0.25": 0.5, "tar@far=0.001": 0.0, "n_impostors": 10}


def test_verification_report_keys():
    rep = verification_report(KF_SCORES, KF_SAME, KF_FOLDS)
    assert rep["accuracy"] == pytest.approx(0.625)
    assert {"std", "threshold_mean", "fold_accuracies", "tar@far=0.01", "tar@far=0.001", "tar@far=0.0001",
            "n_impostors"} <= set(rep)
    assert rep["n_impostors"] == 4


BAD_INPUTS = [
    pytest.param([], [], id="empty"),
    pytest.param([0.1, np.nan, 0.3, 0.4], [True, False, True, False], id="nan"),
    pytest.param([0.1, np.inf, 0.3, 0.4], [True, False, True, False], id="inf"),
    pytest.param([0.1, 0.2, 0.3], [True, False], id="length-mismatch"),
]


@pytest.mark.parametrize("scores, issame", BAD_INPUTS)
@pytest.mark.parametrize("fn", [kfold_accuracy, roc_curve, tar_at_far, best_threshold, verification_report])
def test_bad_inputs_raise(fn, scores, issame):
    with pytest.raises(InvalidInputError):
        fn(np.asarray(scores, float), np.asarray(issame, bool))


@pytest.mark.parametrize("issame", [[True] * 4, [False] * 4], ids=["all-genuine", "all-impostor"])
def test_roc_single_class_raises(issame):
    with pytest.raises(InvalidInputError, match="both genuine and impostor"):
        roc_curve([0.1, 0.2, 0.3, 0.4], issame)


def test_kfold_needs_two_folds():
    with pytest.raises(InvalidInputError, match="two folds"):
        kfold_accuracy(KF_SCORES, KF_SAME, np.zeros(8, int))


@pytest.mark.parametrize("impostors, far", [([], 0.1), ([0.1, np.nan], 0.1), ([0.1, 0.2], -0.1), ([0.1, 0.2], 1.5)])
def test_threshold_at_far_bad_inputs(impostors, far):
    with pytest.raises(InvalidInputError):
        threshold_at_far(np.asarray(impostors, float), far)
