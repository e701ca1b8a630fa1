"""(c) pair-free attackers: the Gromov–Wasserstein matcher sees through a secret rotation, not through per-user salts."""

import numpy as np
import pytest

from advface_sdk.evaluation.attacks import l2_normalize, match_without_pairs, matched_rank1
from advface_sdk.keys import random_rotation
from facecore.errors import InvalidInputError


@pytest.fixture(scope="module")
def people():
    """Enrolled and probe embeddings of 80 people: like face embeddings, a shared mean and unequal variances."""
    rng = np.random.default_rng(0)
    n, d = 80, 32
    ids = rng.standard_normal((n, d)) * np.linspace(2.0, 0.3, d) + 1.0
    enrolled = l2_normalize(ids + 0.4 * rng.standard_normal((n, d)))
    probes = l2_normalize(ids + 0.4 * rng.standard_normal((n, d)))
    assert np.mean((enrolled @ probes.T).argmax(1) == np.arange(n)) > 0.95  # a working recognizer
    return rng, enrolled, probes


def test_secret_rotation_does_not_hide_who_is_who(people):
    rng, enrolled, probes = people
    rotated = enrolled @ random_rotation(rng, enrolled.shape[1]).T
    assert np.mean((rotated @ probes.T).argmax(1) == np.arange(len(probes))) < 0.2  # direct matching fails
    found = match_without_pairs(rotated, probes)
    assert matched_rank1(found["match"]) > 0.8
    assert found["epsilon"] > 0 and found["objective"] >= 0


def test_per_user_rotations_leave_nothing_to_match(people):
    rng, enrolled, probes = people
    salted = np.stack([random_rotation(rng, enrolled.shape[1]) @ e for e in enrolled])
    assert matched_rank1(match_without_pairs(salted, probes)["match"]) < 0.1


def test_sets_of_different_sizes_are_refused(people):
    _, enrolled, probes = people
    with pytest.raises(InvalidInputError, match="same size"):
        match_without_pairs(enrolled[:10], probes[:12])


def test_a_store_with_several_templates_per_person_gives_decoy_padding_away():
    """The benchmark's paired-scatter thief finds the template half of decoy-padded templates (c = 1)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "alignment_attacks", Path(__file__).resolve().parents[1] / "benchmarks" / "alignment_attacks.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(1)
    n, per, d = 300, 3, 16
    ids = rng.standard_normal((2 * n, d)) * np.linspace(2.0, 0.3, d) + 1.0
    faces = l2_normalize(np.repeat(ids, per, 0) + 0.4 * rng.standard_normal((2 * n * per, d)))
    store, public = faces[:n * per], faces[n * per:]  # the deployer's public faces are other people
    scheme = bench.Scheme("decoy", d, 7, public, decoy=1.0)
    padded = scheme.store(store, store, np.repeat(np.arange(n), per))
    truth = scheme.rot[:, :d]
    assert bench.overlap(random_rotation(rng, 2 * d)[:, :d], truth) < 0.7  # a guess: ~0.62 for 16 of 32 dimensions
    assert bench.overlap(bench.paired_scatter_subspace(padded, d), truth) > 0.8  # the weakest identity directions stay hidden
