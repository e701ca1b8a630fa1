"""Bucketed deployment keys (1:N): key files, buckets, templates under their ids, probes per bucket, the CLI and
bucketed galleries on FAISS, Milvus Lite and (with ``FACEPRIV_MILVUS_URI``) a Milvus server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from advface_sdk import DeploymentKey, Gallery, Protector, prepare_probe, protect
from advface_sdk.cli import main as cli
from advface_sdk.keys import BUCKETED_KEY_FORMAT, KEY_FORMAT, MAX_BUCKETS
from facecore.errors import DeploymentKeyError, InvalidInputError, KeyMismatchError
from facecore.metrics import cosine_scores

from conftest import MILVUS_SKIP_REASON, MILVUS_URI, server_collection

K = 16
STORES = ["faiss", "milvus", pytest.param("milvus-server", marks=pytest.mark.skipif(not MILVUS_URI, reason=MILVUS_SKIP_REASON))]


def _store_options(store: str) -> tuple[str, dict]:
    """(store name, its options); a Milvus server gets a fresh collection (dropped when the session ends)."""
    return ("milvus", {"uri": MILVUS_URI, "collection": server_collection()}) if store == "milvus-server" else (store, {})


@pytest.fixture(scope="module")
def bucket_key(tmp_path_factory, plain):
    path = tmp_path_factory.mktemp("bucketed") / "deploy.key"
    DeploymentKey.generate(plain.artifact.protector_id, K).save(path)
    return path


@pytest.fixture(scope="module")
def keyed(bucket_key):
    return Protector("fr128", backend="onnxruntime", key=bucket_key)


@pytest.fixture(scope="module")
def people():
    rng = np.random.default_rng(11)
    z = rng.standard_normal((120, 128)).astype(np.float32) * 2.0
    return [f"user-{i}" for i in range(len(z))], z, z + 0.6 * rng.standard_normal(z.shape).astype(np.float32)


def test_bucketed_key_file(tmp_path, plain, keyfile):
    key = DeploymentKey.generate(plain.artifact.protector_id, K)
    path = key.save(tmp_path / "k")
    record = json.loads(path.read_text())
    assert record["format"] == BUCKETED_KEY_FORMAT and record["buckets"] == K
    loaded = DeploymentKey.load(path)
    assert loaded == key and loaded.buckets == K and f"buckets={K}" in repr(loaded)
    # the bucket count is part of the key: same secret, other K -> other key id
    assert DeploymentKey(key.secret, key.protector_id, 8).key_id != key.key_id != DeploymentKey(key.secret, key.protector_id).key_id
    # plain keys are written as before (format 1, no buckets field), so older readers still read them
    plain_record = json.loads(keyfile.read_text())
    assert plain_record["format"] == KEY_FORMAT and "buckets" not in plain_record
    for edit in ({"buckets": 8}, {"buckets": 1}, {"buckets": "16"}, {"format": KEY_FORMAT}):
        bad = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
        bad.write_text(json.dumps({**record, **edit}))
        bad.chmod(0o600)
        with pytest.raises(DeploymentKeyError, match="damaged|edited"):
            DeploymentKey.load(bad)
    for buckets in (0, MAX_BUCKETS + 1, True, 2.0):
        with pytest.raises(DeploymentKeyError, match="buckets"):
            DeploymentKey.generate(plain.artifact.protector_id, buckets)


def test_buckets_are_keyed_spread_and_rotations_orthogonal(bucket_key):
    key = DeploymentKey.load(bucket_key)
    ids = [f"id-{i}" for i in range(4000)]
    b = key.bucket(ids)
    assert b.dtype == np.int64 and b.min() >= 0 and b.max() < K
    counts = np.bincount(b, minlength=K)
    assert counts.min() > 150 and counts.max() < 350  # about 250 each
    assert np.array_equal(b, key.bucket(np.asarray(ids))) and key.bucket("id-7")[0] == b[7]
    other = DeploymentKey.generate(key.protector_id, K).bucket(ids)  # another secret: another assignment
    assert (other == b).mean() < 0.2
    r0, r1 = key.bucket_rotation(0, 128), key.bucket_rotation(1, 128)
    assert np.allclose(r0 @ r0.T, np.eye(128), atol=1e-5) and np.abs(r0 - r1).max() > 0.1
    for bad in ([1, 2], ["ok", ""], None):
        with pytest.raises(InvalidInputError, match="ids"):
            key.bucket(bad)
    with pytest.raises(InvalidInputError, match="bucket"):
        key.bucket_rotation(K, 128)


def test_templates_under_ids_match_probes_of_their_bucket(plain, keyed, bucket_key, people):
    ids, z, probes = people
    stored = keyed.protect(z, users=ids)
    reference = cosine_scores(plain.protect(z), probes)
    # 1:1 (claimed ids): the score is AdvFace's exactly
    assert np.abs(cosine_scores(stored, keyed.prepare_probe(probes, users=ids)) - reference).max() < 1e-5
    # 1:N: one prepared probe per bucket, row b for bucket b's templates
    every = keyed.prepare_probe(probes)
    assert every.shape == (len(z), K, 128) and every.dtype == probes.dtype
    b = keyed.key.bucket(ids)
    assert np.abs(cosine_scores(stored, every[np.arange(len(z)), b]) - reference).max() < 1e-5
    # across buckets a template is unrelated to the probe of its own face
    other = (b + 1) % K
    assert np.abs(cosine_scores(stored, every[np.arange(len(z)), other])).mean() < 0.2 < reference.mean()
    # rows: a per-row id equals the same id for a single row; numpy, torch and the module functions agree
    # (one row runs another ONNX Runtime GEMM path: a few float32 ulps of templates of norm ~10, up to 4e-6)
    assert np.allclose(keyed.protect(z[3], users=ids[3]), stored[3], rtol=0, atol=1e-5)
    assert np.array_equal(protect(z, key=bucket_key, users=ids), stored)
    assert np.array_equal(prepare_probe(probes, key=bucket_key), every)
    import torch

    assert np.allclose(keyed.protect(torch.from_numpy(z), users=ids).numpy(), stored, atol=1e-6)
    assert tuple(keyed.prepare_probe(torch.from_numpy(probes)).shape) == (len(z), K, 128)


def test_bucketed_key_refuses_what_it_cannot_place(plain, keyed, people, tmp_path, bucket_key):
    ids, z, _ = people
    with pytest.raises(InvalidInputError, match="buckets: pass users="):
        keyed.protect(z)
    with pytest.raises(InvalidInputError, match="user ids for"):
        keyed.protect(z, users=ids[:-1])
    with pytest.raises(InvalidInputError, match="two modes"):
        keyed.protect(z, salts=bytes(16), users=ids)
    with pytest.raises(DeploymentKeyError, match="users="):
        plain.protect(z, users=ids)
    src = tmp_path / "z.npy"
    np.save(src, z)
    result = CliRunner().invoke(cli, ["protect", str(src), str(tmp_path / "out.npy"), "-K", str(bucket_key)])
    assert result.exit_code != 0 and "buckets" in result.output and not (tmp_path / "out.npy").exists()


def test_bucketed_onnx_graphs_match_the_protector(tmp_path, keyed, bucket_key, people):
    """export-onnx -K BUCKETED: the template graph takes each row's bucket as a second input, the probe graph prepares
    every bucket; ONNX Runtime agrees with the protector within 1e-5 (relative to the embeddings' norm)."""
    import onnxruntime as ort

    from advface_sdk._onnx_export import BUCKETS, INPUT, OUTPUT

    ids, z, probes = people
    for args, feeds, expected in ((["-o", str(tmp_path / "t.onnx"), "--fresh-noise", "0"],
                                   {INPUT: z, BUCKETS: keyed.key.bucket(ids)},
                                   keyed.protect(z, users=ids)),
                                  (["-o", str(tmp_path / "p.onnx"), "--probe"], {INPUT: probes}, keyed.prepare_probe(probes))):
        result = CliRunner().invoke(cli, ["export-onnx", "fr128", *args, "-K", str(bucket_key)])
        assert result.exit_code == 0, result.output
        assert f"{K} buckets" in result.output and (Path(args[1]).stat().st_mode & 0o777) == 0o600
        out = ort.InferenceSession(args[1], providers=["CPUExecutionProvider"]).run([OUTPUT], feeds)[0]
        assert out.shape == expected.shape
        assert np.abs(out - expected).max() < 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_bucketed_onnx_template_graph_draws_fresh_noise(tmp_path, keyed, bucket_key, people, precision):
    """A bucketed key's exported template graph adds default_fresh_noise, drawn afresh by ONNX Runtime on every run:
    norms kept, ~0.99 cosine from the protector's noiseless templates; noise is refused where it has no place."""
    import onnxruntime as ort

    from advface_sdk._onnx_export import BUCKETS, INPUT, OUTPUT

    ids, z, _ = people
    path = tmp_path / "t.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", "fr128", "-o", str(path), "-K", str(bucket_key), "--precision", precision])
    assert result.exit_code == 0 and "fresh noise 0.15" in result.output, result.output
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {INPUT: z, BUCKETS: keyed.key.bucket(ids)}
    first, second = (session.run([OUTPUT], feeds)[0] for _ in range(2))
    exact = keyed.protect(z, users=ids)
    assert not np.allclose(first, second, atol=1e-2)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), np.linalg.norm(exact, axis=1), rtol=2e-3 if precision == "fp16" else 1e-5)
    agree = np.sum(first * exact, 1) / np.linalg.norm(first, axis=1) / np.linalg.norm(exact, axis=1)
    assert 0.97 < agree.min() and agree.mean() < 0.995
    for args in (["--probe", "-K", str(bucket_key), "--fresh-noise", "0.1"], ["--fresh-noise", "0.1"]):
        result = CliRunner().invoke(cli, ["export-onnx", "fr128", "-o", str(tmp_path / "x.onnx"), *args])
        assert result.exit_code != 0 and "fresh-noise" in result.output and not (tmp_path / "x.onnx").exists()


def test_cli_keygen_buckets(tmp_path):
    result = CliRunner().invoke(cli, ["keygen", str(tmp_path / "b.key"), "--buckets", "64"])
    assert result.exit_code == 0, result.output
    assert DeploymentKey.load(tmp_path / "b.key").buckets == 64 and "64 buckets" in result.output
    result = CliRunner().invoke(cli, ["keygen", str(tmp_path / "c.key"), "--buckets", "0"])
    assert result.exit_code != 0 and "buckets" in result.output and not (tmp_path / "c.key").exists()


@pytest.mark.parametrize("store", STORES)
def test_bucketed_gallery_ranks_exactly_as_the_plain_keyed_one(tmp_path, bucket_key, keyfile, people, store):
    """Each template sits in its id's bucket (a store partition); a search merges the K per-bucket lists (sent
    concurrently to Milvus), so ids and scores are those of the plain keyed gallery, at every Milvus consistency
    level; the gallery opens only with its key."""
    ids, z, probes = people
    kind = store
    store, options = _store_options(kind)
    _, plain_options = _store_options(kind)
    with Gallery.create(tmp_path / "b", store=store, key=bucket_key, fresh_noise=0, **options) as g, \
            Gallery.create(tmp_path / "p", store=store, key=keyfile, **plain_options) as p:
        g.enroll(ids, z)
        p.enroll(ids, z)
        assert g.store.partitions == K and g.info()["store_info"]["partitions"] == K
        hits, ref = g.search(probes, k=5), p.search(probes, k=5)
        np.testing.assert_allclose(hits.scores, ref.scores, atol=2e-5)
        assert (hits.ids == ref.ids).mean() > 0.99 and (hits.ids[:, 0] == np.asarray(ids)).mean() > 0.9
        # a template stored in bucket b is not found by a probe prepared for another bucket
        one = g.protector.prepare_probe(probes[:1], users=ids[:1])
        own = int(g.protector.key.bucket(ids[0])[0])
        assert g.store.search(one, 1, np.array([own]))[0][0, 0] == ids[0]
        assert ids[0] not in g.store.search(one, 5, np.array([(own + 1) % K]))[0][0].tolist()
        g.remove(ids[:10])
        assert not set(g.search(probes[:10], k=5).ids.ravel()) & set(ids[:10])
        pre = g.protector.protect(z[:2], users=["pre-a", "pre-b"])
        g.enroll(["pre-a", "pre-b"], pre, protected_by=g.protector_id, key_id=g.key_id)
        assert g.search(probes[:2], k=1).ids[:, 0].tolist() == ["pre-a", "pre-b"]
        with pytest.raises(InvalidInputError, match="partition"):
            Gallery.create(tmp_path / "x", store=store, key=bucket_key, partitions=4)
    with pytest.raises(KeyMismatchError, match="keyed gallery"):
        Gallery.open(tmp_path / "b")
    with pytest.raises(KeyMismatchError, match="not the key"):
        Gallery.open(tmp_path / "b", key=keyfile)
    with Gallery.open(tmp_path / "b", key=bucket_key) as g:
        assert len(g) == len(ids) - 8
        assert g.search(probes[20:40], k=1).ids[:, 0].tolist() == hits.ids[20:40, 0].tolist()
    if store == "milvus":
        for level in ("Bounded", "Session", "Eventually"):
            with Gallery.open(tmp_path / "b", key=bucket_key, consistency=level) as g:
                assert g.search(probes[20:40], k=1).ids[:, 0].tolist() == hits.ids[20:40, 0].tolist()
        with pytest.raises(InvalidInputError, match="consistency"):
            Gallery.open(tmp_path / "b", key=bucket_key, consistency="strong")


def test_fresh_noise_blurs_the_cosines_a_bucket_keeps(plain, keyed, bucket_key, people):
    """Without fresh noise a bucket keeps every cosine between its templates, and a thief holding the very images
    enrolled finds their templates by those cosines; with it he finds none, while every template keeps its norm and
    stays ~0.99 cosine from the noiseless one. Noise comes from fresh entropy: global seeds do not replay it."""
    import torch

    from advface_sdk.evaluation.attacks import find_own_templates

    ids, z, _ = people
    parts = keyed.key.bucket(ids)
    own = plain.protect(z)  # the thief's public SDK, exactly
    exact = keyed.protect(z, users=ids)
    assert (find_own_templates(exact, own, parts) == np.arange(len(z))).mean() > 0.8
    np.random.seed(0)
    torch.manual_seed(0)
    noisy = keyed.protect(z, users=ids, fresh_noise=0.15)
    np.random.seed(0)
    torch.manual_seed(0)
    again = keyed.protect(z, users=ids, fresh_noise=0.15)
    assert not np.allclose(noisy, again, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), np.linalg.norm(exact, axis=1), rtol=1e-5)
    agree = np.sum(noisy * exact, 1) / np.linalg.norm(noisy, axis=1) / np.linalg.norm(exact, axis=1)
    assert 0.97 < agree.min() and agree.mean() < 0.995
    assert (find_own_templates(noisy, own, parts) == -1).all()
    t = keyed.protect(torch.from_numpy(z), users=ids, fresh_noise=0.15)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and not np.allclose(t.numpy(), exact, atol=1e-3)
    assert np.allclose(keyed.protect(z, users=ids, fresh_noise=0), exact)
    for bad in (-0.1, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(InvalidInputError, match="fresh_noise"):
            keyed.protect(z, users=ids, fresh_noise=bad)
    with pytest.raises(DeploymentKeyError, match="keyed"):
        plain.protect(z, fresh_noise=0.1)


@pytest.mark.parametrize("store", ["faiss", "milvus"])
def test_bucketed_gallery_adds_fresh_noise_by_default(tmp_path, bucket_key, keyfile, people, store):
    """A bucketed gallery records and applies default_fresh_noise; matches survive it; an edited value is refused."""
    from advface_sdk.protector import default_fresh_noise
    from facecore.errors import ArtifactError

    ids, z, probes = people
    assert default_fresh_noise(128) == 0.15 and default_fresh_noise(512) == 0.3
    with Gallery.create(tmp_path / "b", store=store, key=bucket_key) as g, \
            Gallery.create(tmp_path / "p", store=store, key=keyfile) as p:
        assert g.fresh_noise == 0.15 and p.fresh_noise == 0.0
        g.enroll(ids, z)
        p.enroll(ids, z)
        hits, ref = g.search(probes, k=1), p.search(probes, k=1)
        assert (hits.ids[:, 0] == np.asarray(ids)).mean() >= (ref.ids[:, 0] == np.asarray(ids)).mean() - 0.02
        assert 0.003 < np.abs(hits.scores - ref.scores).mean() < 0.05
    with Gallery.open(tmp_path / "b", key=bucket_key) as g:
        assert g.fresh_noise == 0.15
    with pytest.raises(InvalidInputError, match="raw gallery"):
        Gallery.create(tmp_path / "r", protector=None, dim=128, recognizer_fingerprint="0" * 16, fresh_noise=0.1)
    manifest = tmp_path / "b" / "gallery.json"
    record = json.loads(manifest.read_text())
    for edit in (2.0, -1, "0.15", None):
        manifest.write_text(json.dumps({**record, "fresh_noise": edit}))
        with pytest.raises(ArtifactError, match="fresh_noise"):
            Gallery.open(tmp_path / "b", key=bucket_key)


def test_cli_gallery_fresh_noise(tmp_path, bucket_key):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "e.npz", embeddings=rng.standard_normal((20, 128)).astype(np.float32),
             ids=np.asarray([f"u{i}" for i in range(20)]))
    run = CliRunner().invoke
    result = run(cli, ["gallery", "enroll", str(tmp_path / "g"), str(tmp_path / "e.npz"), "-K", str(bucket_key),
                       "--fresh-noise", "0.2"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "g" / "gallery.json").read_text())["fresh_noise"] == 0.2
    np.savez(tmp_path / "f.npz", embeddings=rng.standard_normal((2, 128)).astype(np.float32), ids=np.asarray(["x", "y"]))
    result = run(cli, ["gallery", "enroll", str(tmp_path / "g"), str(tmp_path / "f.npz"), "-K", str(bucket_key),
                       "--fresh-noise", "0.3"])
    assert result.exit_code != 0 and "fresh_noise" in result.output
    with Gallery.open(tmp_path / "g", key=bucket_key) as g:
        assert len(g) == 20


def test_benchmark_method_advface_bucketed(people):
    """The harness's ``advface-bucketed``: scores of the claimed user's bucket equal AdvFace's, the key thief's
    ``undo_key`` gives the AdvFace templates back, partitions are the key's buckets, and it rebuilds from its dict."""
    from advface_sdk.evaluation.methods import create_method

    _, z, probes = people
    users = np.arange(len(z)) % 40
    m = create_method("advface-bucketed", buckets=8).fit(z)
    plain = create_method("advface").fit(z)
    stored = m.protect_gallery(z, users)
    assert np.abs(m.match(m.transform_probe(probes, users), stored)
                  - plain.match(plain.transform_probe(probes, users), plain.protect_gallery(z, users))).max() < 1e-5
    np.testing.assert_allclose(m.undo_key(stored, users), plain.protect_gallery(z, users), atol=1e-5)
    parts = m.partitions(users)
    assert set(parts.tolist()) <= set(range(8)) and len(set(parts.tolist())) > 4
    assert np.array_equal(parts, m.key.bucket([f"user-{u}" for u in users]))
    # the embedding attack with the key (each template against every candidate prepared for its bucket) = AdvFace's
    from advface_sdk.evaluation.attacks import score_matrix

    assert m.keyed and np.allclose(score_matrix(m, stored[:10], users[:10], probes[:30]),
                                   score_matrix(plain, plain.protect_gallery(z[:10], users[:10]), users[:10], probes[:30]),
                                   atol=1e-5)
    again = create_method(**{**m.to_dict(), "seed": m.seed})
    assert again.key.key_id == m.key.key_id and again.buckets == 8
    other = create_method(**{**m.to_dict(), "seed": m.seed + 1})  # the attacker's own key: other buckets and rotations
    assert other.key.key_id != m.key.key_id
