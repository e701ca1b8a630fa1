"""Partitioned gallery stores, through the generic ``VectorStore`` interface only: a query sees only the templates
of its own partition, results equal a brute-force search of that partition, bad ``partitions`` change nothing,
remove / contains / reopen work across partitions, and a reopen with another partition count is refused."""

from __future__ import annotations

from contextlib import closing

import numpy as np
import pytest

from advface_sdk.gallery.stores import VectorStore, store_class
from facecore.errors import DuplicateIdError, IncompatibleError, InvalidInputError

#: name → (registered store, options); an entry whose ``index`` is ``"flat"`` must search exactly
STORES = {"faiss-flat": ("faiss", {"index": "flat"}), "milvus-lite": ("milvus", {"index": "flat"}),
          "milvus-hnsw": ("milvus", {"index": "hnsw"})}
DIM, P, K = 8, 4, 5
IDENTITY = {"format": "t", "dim": DIM, "protector": "p", "recognizer": "r", "key_id": None}


@pytest.fixture(params=list(STORES))
def kind(request) -> str:
    return request.param


def _create(folder, kind: str, partitions: int | None = P) -> VectorStore:
    name, options = STORES[kind]
    return store_class(name).create(folder, DIM, IDENTITY, {**options, "partitions": partitions})


def _open(folder, kind: str, partitions: int | None = P) -> VectorStore:
    name, options = STORES[kind]
    return store_class(name).open(folder, DIM, IDENTITY, {**options, "partitions": partitions})


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _templates(n: int = 150, small: int = 3, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` templates spread over partitions 0..P-2, and ``small`` (fewer than K) in partition P-1."""
    parts = np.concatenate([np.random.default_rng(seed).integers(0, P - 1, n), np.full(small, P - 1)])
    return [f"t{i}" for i in range(n + small)], _unit(n + small, seed), parts


def _brute_force(x: np.ndarray, parts: np.ndarray, queries: np.ndarray, qparts: np.ndarray) -> list[np.ndarray]:
    """Row indices of the exact top-K of each query among its partition's templates, best first."""
    out = []
    for q, p in zip(queries, qparts):
        rows = np.flatnonzero(parts == p)
        out.append(rows[np.argsort(-(x[rows] @ q), kind="stable")[:K]])
    return out


def test_search_stays_in_its_partition_and_matches_brute_force(tmp_path, kind):
    ids, x, parts = _templates()
    queries = _unit(60, seed=1)
    qparts = np.random.default_rng(2).permutation(np.arange(60) % P)
    exact = STORES[kind][1].get("index") == "flat"
    with closing(_create(tmp_path / "s", kind)) as store:
        store.add(ids, x, partitions=parts)
        assert len(store) == len(ids) and store.info()["partitions"] == P
        got_ids, got_scores = store.search(queries, K, partitions=qparts)
        assert got_ids.shape == got_scores.shape == (60, K)
        owner = dict(zip(ids, parts))
        truth = _brute_force(x, parts, queries, qparts)
        hits = 0
        for i, want in enumerate(truth):
            found = [j for j in got_ids[i] if j]
            assert {owner[j] for j in found} <= {qparts[i]}, f"query {i} saw another partition"
            assert len(found) == len(want)  # a partition with fewer than K templates fills the rest with "" / -inf
            assert np.all(got_ids[i, len(want):] == "") and np.all(got_scores[i, len(want):] == -np.inf)
            assert np.all(np.diff(got_scores[i, :len(want)]) <= 1e-6)
            if exact:
                assert found == [ids[r] for r in want]
                np.testing.assert_allclose(got_scores[i, :len(want)], x[want] @ queries[i], atol=1e-5)
            hits += len({ids[r] for r in want} & set(found))
        assert hits / sum(map(len, truth)) >= (1.0 if exact else 0.95)
        # a template's own vector: found first (score 1) in its partition, invisible from every other
        row = int(np.flatnonzero(parts == 1)[0])
        probe = np.repeat(x[row:row + 1], P, axis=0)
        got_ids, got_scores = store.search(probe, K, partitions=np.arange(P))
        assert got_ids[1, 0] == ids[row] and got_scores[1, 0] == pytest.approx(1.0, abs=1e-5)
        assert ids[row] not in set(got_ids[[0, 2, 3]].ravel())


def test_empty_partition_and_empty_store_return_no_hits(tmp_path, kind):
    ids, x, parts = _templates(n=20, small=0)  # partition P-1 stays empty
    with closing(_create(tmp_path / "s", kind)) as store:
        got_ids, got_scores = store.search(_unit(2, 3), K, partitions=np.array([0, P - 1]))
        assert np.all(got_ids == "") and np.all(got_scores == -np.inf)
        store.add(ids, x, partitions=parts)
        got_ids, got_scores = store.search(_unit(2, 3), K, partitions=np.array([P - 1, 0]))
        assert np.all(got_ids[0] == "") and np.all(got_scores[0] == -np.inf)
        assert got_ids[1, 0] != "" and got_scores[1, 0] > -np.inf


@pytest.mark.parametrize("bad", [None, np.zeros(9, int), np.full(10, -1), np.full(10, P), np.zeros(10, np.float32),
                                 [0.0] * 10], ids=["missing", "short", "negative", "too-big", "float32", "float-list"])
def test_bad_partitions_are_refused_and_change_nothing(tmp_path, kind, bad):
    ids, x, parts = _templates(n=20, small=2)
    with closing(_create(tmp_path / "s", kind)) as store:
        store.add(ids, x, partitions=parts)
        new = [f"n{i}" for i in range(10)]
        with pytest.raises(InvalidInputError):
            store.add(new, _unit(10, 5), partitions=bad)
        assert len(store) == len(ids) and not store.contains(new).any()
        with pytest.raises(InvalidInputError):
            store.search(_unit(10, 6), K, partitions=bad)


def test_unpartitioned_store_refuses_partitions(tmp_path, kind):
    for folder, count in (("none", None), ("one", 1)):
        with closing(_create(tmp_path / folder, kind, partitions=count)) as store:
            assert store.info()["partitions"] == 1
            with pytest.raises(InvalidInputError):
                store.add(["a"], _unit(1, 0), partitions=np.zeros(1, int))
            assert len(store) == 0
            store.add(["a"], _unit(1, 0))
            with pytest.raises(InvalidInputError):
                store.search(_unit(1, 0), K, partitions=np.zeros(1, int))
            assert store.search(_unit(1, 0), K)[0][0, 0] == "a"


@pytest.mark.parametrize("count", [0, -2, 10**6, True, 2.0, "4"])
def test_bad_partition_counts_are_refused_at_create(tmp_path, kind, count):
    with pytest.raises(InvalidInputError):
        _create(tmp_path / "s", kind, partitions=count)


def test_duplicate_ids_across_partitions_add_nothing(tmp_path, kind):
    with closing(_create(tmp_path / "s", kind)) as store:
        store.add(["a", "b"], _unit(2, 0), partitions=np.array([0, 1]))
        with pytest.raises(DuplicateIdError):
            store.add(["c", "a"], _unit(2, 1), partitions=np.array([2, 3]))
        assert len(store) == 2 and store.contains(["a", "b", "c"]).tolist() == [True, True, False]


def test_remove_contains_and_reopen_across_partitions(tmp_path, kind):
    ids, x, parts = _templates(n=40, small=3)
    gone = [ids[int(np.flatnonzero(parts == p)[0])] for p in range(P)]  # one template of every partition
    with closing(_create(tmp_path / "s", kind)) as store:
        store.add(ids, x, partitions=parts)
        assert store.contains(gone + ["nobody"]).tolist() == [True] * P + [False]
        assert store.remove(gone + ["nobody"]) == P
        assert store.remove(gone) == 0
        assert len(store) == len(ids) - P and not store.contains(gone).any()
    with closing(_open(tmp_path / "s", kind)) as store:
        assert len(store) == len(ids) - P and store.info()["partitions"] == P
        kept = [i for i, t in enumerate(ids) if t not in gone]
        assert store.contains([ids[i] for i in kept]).all() and not store.contains(gone).any()
        got_ids, _ = store.search(x[kept], 1, partitions=parts[kept])
        assert got_ids[:, 0].tolist() == [ids[i] for i in kept]
        rows = [ids.index(t) for t in gone]
        got_ids, _ = store.search(x[rows], K, partitions=parts[rows])
        assert not set(gone) & set(got_ids.ravel())
        store.add(gone, x[rows], partitions=parts[rows])
        assert len(store) == len(ids)


@pytest.mark.parametrize("created, reopened", [(P, 2), (P, None), (None, P)])
def test_reopen_with_another_partition_count_is_refused(tmp_path, kind, created, reopened):
    with closing(_create(tmp_path / "s", kind, partitions=created)) as store:
        store.add(["a"], _unit(1, 0), partitions=None if created is None else np.zeros(1, int))
    with pytest.raises(IncompatibleError, match="partition"):
        _open(tmp_path / "s", kind, partitions=reopened)
    with closing(_open(tmp_path / "s", kind, partitions=created)) as store:
        assert len(store) == 1


@pytest.mark.parametrize("kind", [k for k, (name, _) in STORES.items() if name == "milvus"])
def test_milvus_add_failing_in_a_later_partition_takes_back_the_earlier_ones(tmp_path, kind):
    from pymilvus.exceptions import MilvusException

    too_long = "x" * 600  # over the VARCHAR limit: Milvus refuses partition 2's insert after 0 and 1 went in
    with closing(_create(tmp_path / "s", kind)) as store:
        with pytest.raises(MilvusException):
            store.add(["a", "b", "c", too_long], _unit(4, 0), partitions=np.array([0, 1, 2, 2]))
        assert len(store) == 0 and not store.contains(["a", "b", "c"]).any()


def _every_partition_truth(x: np.ndarray, parts: np.ndarray, queries: np.ndarray, live: np.ndarray) -> list[list[int]]:
    """Row indices of the exact top-K of ``queries[i, parts[row]] · x[row]`` over the live rows, best first."""
    scores = np.einsum("nrd,rd->nr", queries[:, parts], x)
    scores[:, ~live] = -np.inf
    return [[int(r) for r in np.argsort(-s, kind="stable")[:K] if s[r] > -np.inf] for s in scores]


@pytest.mark.parametrize("stacked_scores", [None, 0], ids=["default", "faiss-unstacked"])
def test_search_every_partition_merges_exactly_and_follows_changes(tmp_path, kind, stacked_scores, monkeypatch):
    """Query ``[i, p]`` is searched in partition ``p`` and the P lists merged: equal to brute force, before and after
    a remove and an add in this process (FAISS keeps a stacked copy of the partitions, or searches them one by one)."""
    if stacked_scores is not None:
        if STORES[kind][0] != "faiss":
            pytest.skip("only the FAISS store keeps a stacked copy")
        import advface_sdk.gallery.faiss_store as faiss_store
        monkeypatch.setattr(faiss_store, "STACKED_SCORES", stacked_scores)
    ids, x, parts = _templates(n=120, small=2)
    queries = np.random.default_rng(5).standard_normal((7, P, DIM)).astype(np.float32)
    exact = STORES[kind][1].get("index") == "flat"
    live = np.ones(len(ids), bool)
    with closing(_create(tmp_path / "s", kind)) as store:
        store.add(ids, x, partitions=parts)
        for step in ("added", "removed", "re-added"):
            if step == "removed":
                gone = [ids[i] for i in range(0, len(ids), 3)]
                store.remove(gone)
                live[::3] = False
            elif step == "re-added":
                store.add([ids[0]], x[:1], partitions=parts[:1])
                live[0] = True
            got_ids, got_scores = store.search_every_partition(queries, K)
            assert got_ids.shape == got_scores.shape == (7, K)
            for i, want in enumerate(_every_partition_truth(x, parts, queries, live)):
                assert np.all(np.diff(got_scores[i]) <= 1e-6), step
                assert not {ids[r] for r in np.flatnonzero(~live)} & set(got_ids[i]), f"removed row found ({step})"
                if exact:
                    assert got_ids[i].tolist() == [ids[r] for r in want], step
                    np.testing.assert_allclose(got_scores[i], [queries[i, parts[r]] @ x[r] for r in want], atol=1e-5)
        with pytest.raises(InvalidInputError, match="partitions"):
            store.search_every_partition(queries[:, :P - 1], K)
