"""Deployment keys: key files, keyed templates and probes, the keyed ONNX graphs, bad keys and mix-ups."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from advface_sdk import DeploymentKey, Protector, prepare_probe, protect
from facecore.errors import DeploymentKeyError, KeyMismatchError
from facecore.metrics import cosine_scores


@pytest.fixture(scope="module")
def z():
    return np.random.default_rng(3).standard_normal((300, 128)).astype(np.float32) * 2.5


def test_no_key_is_todays_protection_bit_for_bit(plain, z):
    """key=None: unit rows through the backend, rescaled in float64 (the algorithm before keys existed)."""
    x64 = z.astype(np.float64)
    scale = np.abs(x64).max(axis=1, keepdims=True)
    norm = np.sqrt(((x64 / scale) ** 2).sum(axis=1, keepdims=True)) * scale
    expected = (plain.backend("onnxruntime", "cpu").run((x64 / norm).astype(np.float32)).astype(np.float64) * norm).astype(np.float32)
    assert np.array_equal(Protector("fr128", backend="onnxruntime", key=None).protect(z), expected)
    assert np.array_equal(protect(z, key=None), protect(z))
    assert plain.key_id is None and np.array_equal(plain.prepare_probe(z), z)


def test_key_file(tmp_path, plain):
    key = DeploymentKey.generate(plain.artifact.protector_id)
    path = key.save(tmp_path / "k")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(key.key_id) == 16 and key.secret.hex() not in repr(key)
    loaded = DeploymentKey.load(path)
    assert loaded == key and loaded.key_id == key.key_id
    with pytest.raises(DeploymentKeyError, match="refusing to overwrite"):
        DeploymentKey.generate(plain.artifact.protector_id).save(path)
    assert DeploymentKey.load(path) == key
    assert not np.allclose(key.rotation(128), DeploymentKey.generate(plain.artifact.protector_id).rotation(128))
    r = key.rotation(128)
    assert np.allclose(r @ r.T, np.eye(128), atol=1e-12)


def test_keyed_templates_match_prepared_probes_by_cosine(plain, keyfile, z):
    keyed = Protector("fr128", backend="onnxruntime", key=keyfile)
    stored, probes = keyed.protect(z), keyed.prepare_probe(z[::-1].copy())
    assert stored.dtype == z.dtype and stored.shape == z.shape
    assert np.allclose(np.linalg.norm(stored, axis=1), np.linalg.norm(plain.protect(z), axis=1), rtol=1e-5)
    assert np.abs(cosine_scores(stored, probes) - cosine_scores(plain.protect(z), z[::-1])).max() < 1e-5
    assert np.abs(cosine_scores(stored, plain.protect(z))).mean() < 0.3  # the key moves templates away from plain AdvFace
    assert np.array_equal(protect(z, key=keyfile), stored) and np.array_equal(prepare_probe(z, key=keyfile), keyed.prepare_probe(z))
    import torch

    t = torch.from_numpy(z)
    assert torch.allclose(Protector("fr128", backend="torch", key=keyfile).protect(t), torch.from_numpy(stored), atol=1e-5)
    assert torch.equal(keyed.prepare_probe(t), torch.from_numpy(keyed.prepare_probe(z)))


def test_keyed_onnx_graphs_match_torch(plain, keyfile, z):
    import onnxruntime as ort
    import torch

    from advface_sdk._onnx_export import INPUT, OUTPUT, generator_to_onnx, probe_to_onnx

    art = plain.artifact
    rot = DeploymentKey.load(keyfile).rotation(art.dim)
    with torch.no_grad():
        ref = (art.build_generator()(torch.from_numpy(z)).double() @ torch.tensor(rot).T).numpy()
    for model, expected in ((generator_to_onnx(art.state, art.config, rotation=rot), ref), (probe_to_onnx(rot), z @ rot.T)):
        out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run([OUTPUT], {INPUT: z})[0]
        assert np.abs(out - expected).max() / np.abs(expected).max() < 1e-5


def _write_key(path, **edits):
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(edits)
    return record


@pytest.mark.parametrize("case", ["missing", "truncated", "pem", "other json", "edited", "mode", "directory"])
def test_bad_key_files(tmp_path, keyfile, case):
    bad = tmp_path / "bad.key"
    if case == "truncated":
        bad.write_bytes(keyfile.read_bytes()[:60])
    elif case == "pem":
        bad.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n")
    elif case == "other json":
        bad.write_text(json.dumps({"format": "something/1"}))
    elif case == "edited":
        bad.write_text(json.dumps(_write_key(keyfile, protector="0123456789abcdef")))
    elif case == "mode":
        bad.write_bytes(keyfile.read_bytes())
        os.chmod(bad, 0o644)
    elif case == "directory":
        bad.mkdir()
    if bad.is_file() and case != "mode":
        os.chmod(bad, 0o600)
    with pytest.raises(DeploymentKeyError):
        Protector("fr128", key=bad)


def test_key_of_another_protector_and_store_of_another_key(tmp_path, keyfile, z):
    other = DeploymentKey.generate("0" * 16)
    with pytest.raises(KeyMismatchError, match="was made for protector"):
        Protector("fr128", key=other)
    np.savez(tmp_path / "emb.npz", embeddings=z)
    cli = [sys.executable, "-m", "advface_sdk"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda *a: subprocess.run([*cli, *map(str, a)], capture_output=True, text=True, env=env)  # noqa: E731
    store = tmp_path / "store"
    store.mkdir()
    assert run("protect", tmp_path / "emb.npz", store / "t.npz", "-K", keyfile).returncode == 0
    assert run("prepare-probe", tmp_path / "emb.npz", store / "p.npz", "-K", keyfile).returncode == 0
    key2 = tmp_path / "k2"
    r = run("keygen", key2)
    assert r.returncode == 0 and "wrote deployment key" in r.stdout
    r = run("keygen", key2)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    mine, theirs = Protector("fr128", key=keyfile), Protector("fr128", key=key2)
    # the CLI ran with one thread: the same numbers up to float summation order
    np.testing.assert_allclose(mine.load_keyed(store / "t.npz"), mine.protect(z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mine.load_keyed(store / "p.npz", "probes"), mine.prepare_probe(z), rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyMismatchError, match="deployment key"):
        theirs.load_keyed(store / "t.npz")
    with pytest.raises(KeyMismatchError):
        Protector("fr128").load_keyed(store / "p.npz", "probes")
    with pytest.raises(ValueError, match="holds probes"):
        mine.load_keyed(store / "p.npz")
    fr512_key = tmp_path / "k512"
    assert run("keygen", "-m", "fr512", fr512_key).returncode == 0
    for args in (("protect", tmp_path / "emb.npz", store / "x.npz", "-K", fr512_key),
                 ("protect", store / "t.npz", store / "x.npz", "-K", keyfile),
                 ("prepare-probe", tmp_path / "emb.npz", store / "x.npz", "-K", tmp_path / "missing.key")):
        r = run(*args)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error:"), r.stderr
        assert not (store / "x.npz").exists() and not list(store.glob(".x.npz*"))
