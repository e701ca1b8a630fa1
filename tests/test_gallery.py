"""``Gallery`` on every store (FAISS exact, FAISS HNSW, FAISS IVF, a real Milvus Lite database and, with
``FACEPRIV_MILVUS_URI``, a Milvus server): enroll, search, remove, reopen, typed errors that change nothing,
provenance checks, a writer killed by SIGKILL, concurrent searches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from advface_sdk import DeploymentKey, Gallery, Protector, protect
from advface_sdk.gallery import list_stores
from facecore.errors import (
    ArtifactError,
    BackendUnavailableError,
    DeploymentKeyError,
    DuplicateIdError,
    IncompatibleError,
    InvalidInputError,
    KeyMismatchError,
    NonFiniteError,
    StoreMissingError,
)

from conftest import MILVUS_SKIP_REASON, MILVUS_URI, server_collection

STORES = {"faiss-flat": ("faiss", {"index": "flat"}), "faiss-hnsw": ("faiss", {"index": "hnsw"}),
          "faiss-ivf": ("faiss", {"index": "ivf", "nlist": 16, "nprobe": 8}), "milvus-lite": ("milvus", {"index": "flat"})}
FR128 = Protector("fr128").artifact.recognizer_fingerprint
if MILVUS_URI:
    STORES["milvus-server"] = ("milvus", {"index": "flat", "uri": MILVUS_URI})


@pytest.fixture(params=[*STORES, *([] if MILVUS_URI else [pytest.param("milvus-server", marks=pytest.mark.skip(
    reason=MILVUS_SKIP_REASON))])])
def kind(request):
    return request.param


def _people(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"p{seed}-{i}" for i in range(n)], rng.standard_normal((n, 128)).astype(np.float32)


def _create(path, kind, **kw) -> Gallery:
    store, options = STORES[kind]
    if kind == "milvus-server":
        options = {**options, "collection": server_collection()}
    return Gallery.create(path, store=store, **options, **kw)


def test_registry_lists_both_stores():
    assert {"faiss", "milvus"} <= set(list_stores())


def test_enroll_search_remove_reopen(tmp_path, kind):
    ids, x = _people(300)
    with _create(tmp_path / "g", kind) as g:
        assert g.enroll(ids[:200], x[:200], fingerprint=FR128) == 200
        g.enroll(ids[200:], x[200:])
        assert len(g) == 300
        probes = x + 0.05 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
        hits = g.search(probes, k=3)
        assert hits.ids.shape == hits.scores.shape == (300, 3)
        assert (hits.ids[:, 0] == np.asarray(ids)).mean() >= (0.98 if kind == "faiss-ivf" else 1.0)  # IVF: 8 of 16 lists
        assert (np.diff(hits.scores, axis=1) <= 1e-6).all()
        # stored are the protected templates: the template itself scores 1 against its own entry
        own = g.search(protect(x[:5]), k=1)
        np.testing.assert_allclose(own.scores[:, 0], 1.0, atol=1e-4)
        assert g.remove([ids[0], ids[1], "never-enrolled"]) == 2
        assert len(g) == 298 and g.contains(ids[:3]).tolist() == [False, False, True]
        assert ids[0] not in g.search(x[:1], k=5).ids
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 298
        assert g.search(x[2:3], k=1).ids[0, 0] == ids[2]
        assert g.info()["protector"]["id"].startswith("fr128@")
        few = g.search(x[:1], k=400)  # more than enrolled: padded with "" / -inf (HNSW, IVF may return fewer)
        found = int((few.ids[0] != "").sum())
        low = {"faiss-hnsw": 250, "faiss-ivf": 75}.get(kind, 298)  # IVF: the rows in 8 of 16 lists
        assert low <= found <= 298 and np.isneginf(few.scores[0, -1])


def test_bad_input_typed_errors_change_nothing(tmp_path, kind):
    ids, x = _people(50)
    with _create(tmp_path / "g", kind) as g:
        g.enroll(ids, x)
        before = g.search(x, k=3)
        nan = x[:2].copy()
        nan[1, 7] = np.nan
        cases = [
            (InvalidInputError, lambda: g.enroll(["a", "b"], np.ones((2, 64), np.float32))),  # wrong dimension
            (NonFiniteError, lambda: g.enroll(["a", "b"], nan)),
            (DuplicateIdError, lambda: g.enroll(["a", "a"], x[:2])),  # within the batch
            (DuplicateIdError, lambda: g.enroll(["new", ids[3]], x[:2])),  # already enrolled
            (InvalidInputError, lambda: g.enroll(["a", ""], x[:2])),
            (InvalidInputError, lambda: g.enroll(["a"], x[:2])),
            (InvalidInputError, lambda: g.search(np.ones((1, 512), np.float32))),
            (InvalidInputError, lambda: g.search(x[:1], k=0)),
            (NonFiniteError, lambda: g.search(nan)),
        ]
        for error, call in cases:
            with pytest.raises(error):
                call()
        assert len(g) == 50 and not g.contains(["a", "b", "new"]).any()
        after = g.search(x, k=3)
        np.testing.assert_array_equal(after.ids, before.ids)


def test_refuses_other_protector_recognizer_and_key(tmp_path, kind):
    ids, x = _people(20)
    with _create(tmp_path / "g", kind) as g:
        g.enroll(ids, x)
        with pytest.raises(IncompatibleError, match="recognizer"):
            g.enroll(["x"], x[:1], fingerprint="0123456789abcdef")
        with pytest.raises(IncompatibleError, match="protector"):
            g.enroll(["x"], x[:1], protected_by="fr512@0000000000000000")
        with pytest.raises(IncompatibleError, match="key"):
            g.enroll(["x"], x[:1], key_id="k1")
        with pytest.raises(IncompatibleError, match="recognizer"):
            g.search(x[:1], fingerprint="0123456789abcdef")
        g.enroll(["pre"], protect(x[:1]), protected_by=g.protector_id)  # already-protected templates of this protector
        assert g.search(protect(x[:1]), k=1).scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(IncompatibleError, match="protector"):
        Gallery.open(tmp_path / "g", protector="fr512")
    with pytest.raises(IncompatibleError, match="key"):
        Gallery.open(tmp_path / "g", key_id="k1")
    with pytest.raises(InvalidInputError, match="already holds"):
        _create(tmp_path / "g", kind)
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 21


def test_milvus_collection_of_another_gallery_is_refused(tmp_path):
    """Reached by URI, a collection still says whose templates it holds."""
    ids, x = _people(10)
    with Gallery.create(tmp_path / "a", store="milvus") as g:
        g.enroll(ids, x)
    uri = str(tmp_path / "a" / "milvus.db")
    with pytest.raises(IncompatibleError, match="another gallery"):
        Gallery.create(tmp_path / "b", protector="fr512", store="milvus", uri=uri)
    assert not (tmp_path / "b").exists()  # a refused create leaves no folder behind
    with pytest.raises(BackendUnavailableError, match="cannot connect"):
        Gallery.create(tmp_path / "d", store="milvus", uri="http://127.0.0.1:9")  # nothing listens there
    assert not (tmp_path / "d").exists()
    raw = Gallery.create(tmp_path / "c", protector=None, store="milvus", uri=str(tmp_path / "c.db"), dim=128,
                         recognizer_fingerprint=FR128)
    raw.close()
    with pytest.raises(IncompatibleError, match="another gallery"):
        Gallery.open(tmp_path / "a", uri=str(tmp_path / "c.db"))
    with Gallery.open(tmp_path / "a", uri=uri) as g:
        assert len(g) == 10


def test_delete_removes_every_template_and_the_folder(tmp_path, kind, keys):
    """``Gallery.delete`` needs no key, drops the store's data (a Milvus collection, on a server too) and the folder."""
    ids, x = _people(30)
    with _create(tmp_path / "g", kind, key=keys["a"]) as g:
        g.enroll(ids, x)
        collection = g.store.info().get("collection")
    assert Gallery.delete(tmp_path / "g") == 30
    assert not (tmp_path / "g").exists()
    if kind == "milvus-server":
        from pymilvus import MilvusClient

        client = MilvusClient(MILVUS_URI, token=os.environ.get("MILVUS_TOKEN", ""))
        assert collection not in client.list_collections()
        client.close()
    with pytest.raises(ArtifactError, match="no gallery"):
        Gallery.delete(tmp_path / "g")


def test_delete_refuses_a_store_of_another_gallery(tmp_path):
    ids, x = _people(10)
    with Gallery.create(tmp_path / "a", store="milvus") as g:
        g.enroll(ids, x)
    Gallery.create(tmp_path / "c", protector=None, store="milvus", uri=str(tmp_path / "c.db"), dim=128,
                   recognizer_fingerprint=FR128).close()
    with pytest.raises(IncompatibleError, match="another gallery"):
        Gallery.delete(tmp_path / "a", uri=str(tmp_path / "c.db"))
    with Gallery.open(tmp_path / "a") as g:  # nothing was deleted
        assert len(g) == 10
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "gallery.json").write_text("[]")
    with pytest.raises(ArtifactError, match="format"):
        Gallery.delete(tmp_path / "x")
    assert (tmp_path / "x" / "gallery.json").exists()


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from test_gallery import _create, _people
    g = _create(sys.argv[1], sys.argv[2])
    g.enroll(*_people(100))
    rng = np.random.default_rng(7)
    for c in range(10_000):
        if c:
            g.enroll([f"w{c}-{i}" for i in range(100)], rng.standard_normal((100, 128)).astype(np.float32))
        print(c, flush=True)
""")


def test_writer_killed_during_enroll_loses_nothing_committed(tmp_path, kind):
    """SIGKILL mid-enroll: every chunk reported committed survives, the gallery opens; searches from another
    process (FAISS and a Milvus server; Milvus Lite serves a file to one process) see whole commits only."""
    ids, x = _people(100)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "g"), kind], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent)
    committed, sizes, reader = -1, [], None
    try:
        while committed < 8:
            line = proc.stdout.readline()
            assert line, "writer died"
            committed = int(line)
            if kind != "milvus-lite":
                reader = reader or Gallery.open(tmp_path / "g")
                n = len(reader)
                sizes.append(n)
                assert n % 100 == 0 and n >= 100 * (committed + 1)
                assert (reader.search(x[:20], k=1).ids[:, 0] == np.asarray(ids[:20])).all()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert sizes == sorted(sizes)
    with Gallery.open(tmp_path / "g") as g:
        reported = [f"w{c}-{i}" for c in range(1, committed + 1) for i in range(100)]
        assert g.contains(reported).all() and g.contains(ids).all()
        assert len(g) >= 100 * (committed + 1)
        assert (g.search(x, k=1).ids[:, 0] == np.asarray(ids)).all()
        g.enroll(["after-crash"], x[:1])


def test_concurrent_searches_during_enroll(tmp_path, kind):
    """A second gallery object searching while the first enrolls sees whole commits only, in order."""
    ids, x = _people(200)
    with _create(tmp_path / "g", kind) as writer:
        writer.enroll(ids[:100], x[:100])
        reader = Gallery.open(tmp_path / "g")
        done, seen, errors = threading.Event(), [], []

        def search_loop():
            try:
                while not done.is_set():
                    n = len(reader)
                    hits = reader.search(x[:10], k=1)
                    seen.append(n)
                    assert n % 10 == 0 and (hits.ids[:, 0] == np.asarray(ids[:10])).all()
            except Exception as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=search_loop)
        thread.start()
        for start in range(100, 200, 10):
            writer.enroll(ids[start:start + 10], x[start:start + 10])
        done.set()
        thread.join()
        reader.close()
    assert not errors, errors
    assert seen == sorted(seen) and seen[-1] <= 200


def test_a_faiss_gallery_that_lost_a_segment_is_deleted_only_with_missing_ok(tmp_path):
    ids, x = _people(20)
    with Gallery.create(tmp_path / "g") as g:
        g.enroll(ids[:10], x[:10])
        g.enroll(ids[10:], x[10:])
    next((tmp_path / "g").glob("seg-*.npz")).unlink()
    with pytest.raises(StoreMissingError, match="lost committed templates; nothing was deleted.*missing_ok=True"):
        Gallery.delete(tmp_path / "g")
    assert (tmp_path / "g" / "gallery.json").is_file()
    assert Gallery.delete(tmp_path / "g", missing_ok=True) == 0 and not (tmp_path / "g").exists()


def test_corrupt_faiss_files_typed_errors_and_rebuild(tmp_path):
    ids, x = _people(300)
    with Gallery.create(tmp_path / "g", index="hnsw") as g:
        g.enroll(ids, x)
        expected = g.search(x[:20], k=5).ids
    index_file = next((tmp_path / "g").glob("index-*.faiss"))
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="index file is corrupt.*rebuild"):
        Gallery.open(tmp_path / "g")
    with Gallery.open(tmp_path / "g", rebuild_index=True) as g:  # the templates were never at risk
        assert len(g) == 300
        np.testing.assert_array_equal(g.search(x[:20], k=5).ids, expected)
    segment = next((tmp_path / "g").glob("seg-*.npz"))
    segment.write_bytes(segment.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="seg-.*corrupt"):
        Gallery.open(tmp_path / "g", rebuild_index=True)
    (tmp_path / "g" / "state.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="state.json"):
        Gallery.open(tmp_path / "g")
    (tmp_path / "g" / "gallery.json").write_text("{}")
    with pytest.raises(ArtifactError, match="format"):
        Gallery.open(tmp_path / "g")
    with pytest.raises(ArtifactError, match="no gallery"):
        Gallery.open(tmp_path / "nothing")


def test_raw_gallery_for_baselines(tmp_path):
    ids, x = _people(30)
    with Gallery.create(tmp_path / "raw", protector=None, dim=128, recognizer_fingerprint=FR128) as g:
        g.enroll(ids, x)
        np.testing.assert_allclose(g.search(x[:3], k=1).scores[:, 0], 1.0, atol=1e-5)
    with pytest.raises(IncompatibleError, match="raw"):
        Gallery.open(tmp_path / "raw", protector="fr128")
    with pytest.raises(InvalidInputError, match="raw gallery"):
        Gallery.create(tmp_path / "raw2", protector=None)


def test_ivf_trains_on_first_commit_records_nprobe_and_retrains_on_rebuild(tmp_path):
    """IVF: trained once on the first non-empty commit (nlist = 4·sqrt(N)), the same centroids in every process
    (an immutable trained file), nprobe recorded and overridable, ``rebuild`` retrains on all templates, a corrupt
    trained file is a typed error that ``rebuild`` repairs."""
    import json

    import faiss

    ids, x = _people(1200)
    with Gallery.create(tmp_path / "g", index="ivf", nprobe=4) as g:
        g.enroll(ids[:100], x[:100])
        info = g.info()["store_info"]
        assert (info["nlist"], info["trained_rows"], info["nprobe"], info["retrain_advised"]) == (40, 100, 4, False)
        g.enroll(ids[100:], x[100:])
        assert g.info()["store_info"]["retrain_advised"]  # 1,200 rows > 4 x 100
        probes = x + 0.05 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
        before = g.search(probes, k=5)
        assert 0.2 < (before.ids[:, 0] == np.asarray(ids)).mean() < 0.99  # 4 of 40 lists of structureless data: approximate
    manifest = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert manifest["store"]["options"]["nprobe"] == 4 and manifest["store"]["options"]["index"] == "ivf"
    with Gallery.open(tmp_path / "g") as g:  # from the checkpoint: same answers
        np.testing.assert_array_equal(g.search(probes, k=5).ids, before.ids)
        assert g.store._index.nlist == 40 and g.store._params.nprobe == 4
    with Gallery.open(tmp_path / "g", nprobe=40) as g:  # nprobe = nlist: every list scanned = exact search
        exact = g.search(probes[:50], k=5)
    with Gallery.create(tmp_path / "flat") as f:
        f.enroll(ids, x)
        np.testing.assert_array_equal(exact.ids, f.search(probes[:50], k=5).ids)
    trained = next((tmp_path / "g").glob("ivf-*.faiss"))
    for index in (tmp_path / "g").glob("index-*.faiss"):
        index.unlink()  # no checkpoint: a reader rebuilds the index from the trained file + segments
    (tmp_path / "g" / "state.json").write_text(
        json.dumps({**json.loads((tmp_path / "g" / "state.json").read_text()), "index": None}))
    with Gallery.open(tmp_path / "g") as g:
        np.testing.assert_array_equal(g.search(probes, k=5).ids, before.ids)
    data = bytearray(trained.read_bytes())
    data[len(data) // 2] ^= 0xFF
    trained.write_bytes(bytes(data))
    for index in (tmp_path / "g").glob("index-*.faiss"):
        index.unlink()
    (tmp_path / "g" / "state.json").write_text(
        json.dumps({**json.loads((tmp_path / "g" / "state.json").read_text()), "index": None}))
    with pytest.raises(ArtifactError, match="trained IVF index file is corrupt.*rebuild"):
        Gallery.open(tmp_path / "g")
    with Gallery.open(tmp_path / "g", rebuild_index=True) as g:  # retrained on all 1,200 templates
        info = g.info()["store_info"]
        assert (info["nlist"], info["trained_rows"], info["retrain_advised"]) == (round(4 * 1200 ** 0.5), 1200, False)
        assert g.search(probes[:50], k=5).ids.tolist() != exact.ids.tolist()  # 4 of 139 lists
    with Gallery.open(tmp_path / "g", nprobe=10_000) as g:  # all lists of the new training: exact again
        np.testing.assert_array_equal(g.search(probes[:50], k=5).ids, exact.ids)
    assert not trained.exists() and len(list((tmp_path / "g").glob("ivf-*.faiss"))) == 1  # the old training swept
    assert isinstance(faiss.read_index(str(next((tmp_path / "g").glob("index-*.faiss")))), faiss.IndexIVFFlat)
    with pytest.raises(InvalidInputError, match="nprobe"):
        Gallery.create(tmp_path / "bad", index="ivf", nprobe=0)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two deployment keys of the shipped fr128 protector and one of fr512."""
    folder = tmp_path_factory.mktemp("keys")
    fr128, fr512 = Protector("fr128").artifact.protector_id, Protector("fr512").artifact.protector_id
    paths = {name: folder / f"{name}.key" for name in ("a", "b", "fr512")}
    for name, pid in (("a", fr128), ("b", fr128), ("fr512", fr512)):
        DeploymentKey.generate(pid).save(paths[name])
    return paths


def test_keyed_gallery(tmp_path, kind, keys):
    """A keyed gallery stores R·advface(z), prepares probes with the key, records key_id, and opens only with its key:
    a missing key, another key, a key for an unkeyed gallery or for another protector are KeyMismatchErrors."""
    ids, x = _people(200)
    probes = x + 0.05 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    with _create(tmp_path / "g", kind, key=keys["a"]) as g:
        g.enroll(ids, x)
        assert g.key_id == DeploymentKey.load(keys["a"]).key_id == g.info()["key_id"]
        hits = g.search(probes, k=3)
        assert (hits.ids[:, 0] == np.asarray(ids)).mean() >= (0.98 if kind == "faiss-ivf" else 1.0)
        # stored: the keyed templates; a prepared probe equal to the keyed template scores 1, the clean template does not
        keyed = protect(x[:5], key=keys["a"])
        own = g.store.search(keyed / np.linalg.norm(keyed, axis=1, keepdims=True), 1)
        assert own[0][:, 0].tolist() == ids[:5] and np.allclose(own[1][:, 0], 1.0, atol=1e-4)
        plain = protect(x[:5])
        assert (g.store.search(plain / np.linalg.norm(plain, axis=1, keepdims=True), 1)[1][:, 0] < 0.5).all()
        # keyed scores = unkeyed AdvFace scores (a rotation keeps cosines)
        with _create(tmp_path / "plain", kind) as p:
            p.enroll(ids, x)
            np.testing.assert_allclose(np.sort(p.search(probes[:20], k=3).scores, axis=1),
                                       np.sort(hits.scores[:20], axis=1), atol=2e-4)
        g.enroll(["pre"], protect(x[:1], key=keys["a"]), protected_by=g.protector_id, key_id=g.key_id)
        with pytest.raises(KeyMismatchError, match="key"):  # already-protected templates must say their key
            g.enroll(["pre2"], protect(x[:1]), protected_by=g.protector_id)
        n, hits = len(g), g.search(probes, k=3)
    with pytest.raises(KeyMismatchError, match="keyed gallery"):
        Gallery.open(tmp_path / "g")
    with pytest.raises(KeyMismatchError, match="not the key"):
        Gallery.open(tmp_path / "g", key=keys["b"])
    with pytest.raises(KeyMismatchError, match="not keyed"):
        Gallery.open(tmp_path / "plain", key=keys["a"])
    with pytest.raises(KeyMismatchError, match="made for protector"):
        Gallery.create(tmp_path / "g512", "fr128", key=keys["fr512"])
    with pytest.raises(DeploymentKeyError, match="not found"):
        Gallery.open(tmp_path / "g", key=tmp_path / "missing.key")
    with Gallery.open(tmp_path / "g", key=DeploymentKey.load(keys["a"])) as g:
        assert len(g) == n
        np.testing.assert_array_equal(g.search(probes, k=3).ids, hits.ids)
    with Gallery.open(tmp_path / "g", protector=Protector("fr128", key=keys["a"])) as g:
        assert len(g) == n
