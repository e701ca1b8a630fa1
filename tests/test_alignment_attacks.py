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


@pytest.fixture(scope="module")
def bench():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "alignment_attacks", Path(__file__).resolve().parents[1] / "benchmarks" / "alignment_attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _store_of_people(rng, n: int, per: int, d: int):
    ids = rng.standard_normal((2 * n, d)) * np.linspace(2.0, 0.3, d) + 1.0
    faces = l2_normalize(np.repeat(ids, per, 0) + 0.4 * rng.standard_normal((2 * n * per, d)))
    labels = np.repeat(np.arange(2 * n), per)
    return faces[:n * per], labels[:n * per], faces[n * per:], labels[n * per:]  # the deployer's public faces: other people


def test_the_user_column_gives_decoy_padding_away_but_not_identity_decoys(bench):
    """With the store's user ids as classes, LDA finds the template half of fresh decoys; a keyed virtual identity
    per user makes the decoy half of one user's templates agree as the template half does."""
    rng = np.random.default_rng(2)
    d = 16
    store, users, public, public_users = _store_of_people(rng, 300, 3, d)
    plain = bench.Scheme("decoy", d, 7, public, decoy=1.0)
    virtual = bench.Scheme("identity", d, 7, public, decoy=1.0, identity_decoy=True, public_labels=public_users)
    found = {name: bench.overlap(bench.labelled_scatter_subspace(s.store(store, store, users), users, d), s.rot[:, :d])
             for name, s in (("plain", plain), ("virtual", virtual))}
    guess = bench.overlap(random_rotation(rng, 2 * d)[:, :d], plain.rot[:, :d])
    assert found["plain"] > 0.9
    assert found["virtual"] < guess + 0.1, (found, guess)
    def decoy_agreement(s):  # mean cosine between the decoy halves of one user's three templates
        half = l2_normalize((s.store(store[:3], store[:3], users[:3]) @ s.rot)[:, d:])
        return (half @ half.T)[np.triu_indices(3, 1)].mean()

    assert decoy_agreement(virtual) > decoy_agreement(plain) + 0.3


def test_bucketed_rotation_keeps_scores_within_a_bucket_only(bench):
    rng = np.random.default_rng(3)
    d = 16
    store, users, public, _ = _store_of_people(rng, 60, 2, d)
    scheme = bench.Scheme("buckets", d, 7, public, buckets=4)
    buckets = scheme.bucket(users)
    assert set(buckets.tolist()) == {0, 1, 2, 3} and np.array_equal(buckets, scheme.bucket(users))  # keyed, stable
    templates = scheme.store(store, store, users)
    probes = scheme.probe(store[::-1], users)  # each probe prepared for the bucket of the template it is scored against
    assert np.allclose(np.sum(templates * probes, 1), np.sum(store * store[::-1], 1))  # AdvFace's scores, unchanged
    other = buckets != buckets[0]
    assert np.abs(templates[other] @ templates[0] - store[other] @ store[0]).mean() > 0.1  # across buckets: meaningless


def test_a_store_with_several_templates_per_person_gives_decoy_padding_away(bench):
    """The benchmark's paired-scatter thief finds the template half of decoy-padded templates (c = 1)."""
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


def test_profile_aligner_takes_sets_of_any_sizes(people):
    """A small reference set (a bucket of a few dozen templates) shortens the profiles instead of failing, and
    a rotated copy of the same set is still aligned back onto it."""
    from advface_sdk.evaluation.attacks import align_without_pairs

    rng, enrolled, _ = people
    rotated = enrolled @ random_rotation(rng, enrolled.shape[1]).T
    assert align_without_pairs(rotated, enrolled[:20]).shape == enrolled.shape
    np.testing.assert_allclose(align_without_pairs(rotated[:1], enrolled), rotated[:1], atol=1e-12)  # a bucket of one
    assert align_without_pairs(rotated, enrolled[:1]).shape == enrolled.shape
    mapped = align_without_pairs(rotated, enrolled)
    centred = l2_normalize(enrolled - enrolled.mean(0))
    assert np.mean((mapped @ centred.T).argmax(1) == np.arange(len(enrolled))) > 0.9


def test_known_plaintext_needs_pairs_in_every_partition(people):
    """(d) One rotation per partition: a single map over all pairs fails, one map per partition (pairs in each)
    re-identifies, and partitions without pairs stay unmapped."""
    from advface_sdk.evaluation.attacks import known_plaintext_attack

    rng, enrolled, probes = people
    d, k = enrolled.shape[1], 8
    rots = np.stack([random_rotation(rng, d) for _ in range(k)])
    parts = np.arange(len(enrolled)) % k
    stored = np.einsum("nij,nj->ni", rots[parts], enrolled)
    own = l2_normalize(rng.standard_normal((k * 40, d)))  # the thief's own faces: 40 pairs per partition
    own_parts = np.arange(len(own)) % k
    own_stored = np.einsum("nij,nj->ni", rots[own_parts], own)
    mixed = known_plaintext_attack(own, own_stored, stored, probes)
    split = known_plaintext_attack(own, own_stored, stored, probes, own_parts, parts)
    assert mixed[0] < 0.5 < 0.9 < split[0] and split[1] in ("least squares", "procrustes")
    first = own_parts == 0
    only_first = known_plaintext_attack(own[first], own_stored[first], stored, probes, own_parts[first], parts)
    hit = (l2_normalize(only_first[2]) @ l2_normalize(probes).T).argmax(1) == np.arange(len(probes))
    assert hit[parts == 0].mean() > 0.9 and hit[parts != 0].mean() < 0.3


def test_the_thief_finds_templates_of_his_own_images_by_their_exact_cosines(people):
    """One rotation per partition keeps the cosines inside a partition: a thief holding the very images enrolled
    for some templates finds exactly those (float32 store, no ids), none of the others; his images' noisy copies
    (another photo, as in (c)) are not found; a partition of four templates gives too few votes."""
    from advface_sdk.evaluation.attacks import find_own_templates

    rng, enrolled, probes = people
    d, k = enrolled.shape[1], 4
    own = l2_normalize(rng.standard_normal((200, d)) + 0.5)  # his images' templates (the public SDK)
    rots = np.stack([random_rotation(rng, d) for _ in range(k)])
    held = rng.permutation(200)[:120]  # the store holds 120 of his images among the 80 victims
    whole = np.vstack([own[held], enrolled])
    parts = rng.integers(0, k, len(whole))
    stored = np.einsum("nij,nj->ni", rots[parts], whole).astype(np.float32)
    found = find_own_templates(stored, own, parts)
    assert found[:120].tolist() == held.tolist() and np.all(found[120:] == -1)
    noisy = l2_normalize(own + 0.05 * rng.standard_normal(own.shape))  # other photos of the same people
    assert np.all(find_own_templates(stored, noisy, parts) == -1)
    few = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    small = find_own_templates(np.einsum("nij,nj->ni", rots[few], own[:9]), own, few)
    assert np.all(small[:4] == -1) and small[4:].tolist() == [4, 5, 6, 7, 8]


def test_projecting_each_bucket_commutes_with_its_secret_rotation(bench):
    """The thief's store projection needs no key: per bucket, projecting the rotated templates equals rotating
    the projected ones, and noise in the weak directions comes off."""
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.standard_normal((24, 24)))[0]
    clean = l2_normalize((1.0 + rng.standard_normal((180, 8))) @ basis[:, :8].T)  # faces use few directions
    noisy = l2_normalize(clean + 0.06 * rng.standard_normal((180, 16)) @ basis[:, 8:].T)  # the noise the others
    buckets = np.arange(len(clean)) % 3
    rots = [random_rotation(rng, 24) for _ in range(3)]
    stored = np.stack([x @ rots[b].T for x, b in zip(noisy, buckets)])
    projected = bench.project_buckets(stored, buckets)
    plain = bench.project_buckets(noisy, buckets)
    assert np.allclose(projected, np.stack([x @ rots[b].T for x, b in zip(plain, buckets)]), atol=1e-5)
    assert np.mean(np.sum(plain * clean, 1)) > np.mean(np.sum(noisy * clean, 1)) + 0.01


def test_runs_over_disjoint_keys_merge_into_one_mean_and_refuse_a_key_twice(bench):
    """--merge: per-key results of runs on separate cores join into the same row one run over all keys gives."""
    def run(keys, hits):  # hits: one victim count (of 4) per key, for two attackers
        runs = [{"key": k, "direct": h / 4, "GW": (4 - h) / 4} for k, h in zip(keys, hits)]
        return {"fr512": {"raw accuracy": 99.5, "K=64": {**bench.summarise(runs, [99.0 + k for k in keys], 512),
                                                         "minutes": 1.5}}}

    whole = run([0, 1, 2, 3], [1, 0, 0, 3])["fr512"]["K=64"]
    old = run([0, 1], [1, 0])
    for r in old["fr512"]["K=64"]["per_key"]:  # a run from before keys were named: it started at key 0
        del r["key"]
    del old["fr512"]["K=64"]["accuracy_per_key"]
    merged = bench.merge_runs([old, run([2, 3], [0, 3])], "all")["fr512"]
    row = merged["K=64"]
    assert merged["raw accuracy"] == 99.5 and row["keys"] == 4 and row["minutes"] == 3.0
    assert row["direct"] == whole["direct"] == 0.25 and row["GW"] == whole["GW"] == 0.75 and row["strongest"] == 0.75
    assert [r["key"] for r in row["per_key"]] == [0, 1, 2, 3]
    assert row["accuracy"] == whole["accuracy"] == 100.5  # the old run's mean (99.5) stands for each of its keys
    with pytest.raises(SystemExit, match="a key was measured in two"):
        bench.merge_runs([run([0, 1], [1, 0]), run([1, 2], [0, 0])], "all")
    other = run([5], [1])
    other["fr512"]["K=64"]["per_key"][0]["new attacker"] = 0.0
    with pytest.raises(SystemExit, match="different attackers"):
        bench.merge_runs([run([0], [1]), other], "all")
    folds = run([6], [1])
    folds["fr512"]["K=64"]["store"] = "folds"
    with pytest.raises(SystemExit, match="--store folds, not all"):
        bench.merge_runs([run([0], [1]), folds], "all")
