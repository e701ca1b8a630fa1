"""protect() / Protector / artifacts / CLI on the shipped default artifacts (real ONNX Runtime and torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from advface_sdk import Protector, load_artifact, protect, save_artifact
from advface_sdk.cli import main as cli
from advface_sdk.models.generator import NoiseGenerator
from facecore.errors import ArtifactError, BackendUnavailableError, IncompatibleError, InvalidInputError, NonFiniteError


@pytest.fixture(scope="module")
def emb128():
    return np.random.default_rng(0).standard_normal((300, 128)).astype(np.float32)


@pytest.mark.parametrize("name,dim", [("fr128", 128), ("fr512", 512)])
def test_torch_and_onnxruntime_agree(name, dim):
    x = np.random.default_rng(1).standard_normal((1024, dim)).astype(np.float32) * 3
    a = Protector(name, backend="onnxruntime").protect(x)
    b = Protector(name, backend="torch").protect(x)
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("name", ["fr128", "fr512"])
def test_noise_is_orthogonal_with_the_configured_budget(name):
    p = Protector(name)
    x = np.random.default_rng(2).standard_normal((64, p.dim)).astype(np.float32)
    y = p.protect(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    delta = y / norm - x / norm
    budget = p.artifact.config["budget"]
    np.testing.assert_allclose(np.linalg.norm(delta, axis=1), budget, rtol=1e-4)
    np.testing.assert_allclose(np.sum(delta * x / norm, axis=1), 0, atol=1e-4)


def test_kinds_shapes_and_dtypes_are_preserved(emb128):
    for dtype in (np.float16, np.float32, np.float64):
        out = protect(emb128.astype(dtype))
        assert out.dtype == dtype and out.shape == emb128.shape and isinstance(out, np.ndarray)
    single = protect(emb128[0])
    assert single.shape == (128,)
    np.testing.assert_allclose(single, protect(emb128[:1])[0], atol=1e-6)
    t = torch.from_numpy(emb128).to(torch.float64)
    out = protect(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == t.shape
    np.testing.assert_allclose(out.numpy(), protect(emb128).astype(np.float64), atol=1e-5)


def test_internal_batching_matches_one_call(emb128):
    whole = Protector("fr128").protect(emb128)
    chunked = Protector("fr128", batch_size=7).protect(emb128)
    np.testing.assert_allclose(whole, chunked, atol=1e-6)


@pytest.mark.parametrize("bad,error,words", [
    (np.full((2, 128), np.nan, np.float32), NonFiniteError, "NaN"),
    (np.array([[np.inf] * 128], np.float32), NonFiniteError, "Inf"),
    (np.zeros((3, 128), np.float32), InvalidInputError, "zero"),
    (np.ones((2, 512), np.float32), InvalidInputError, "dimension 512"),
    (np.ones((0, 128), np.float32), InvalidInputError, "empty"),
    (np.ones((2, 128), np.int32), InvalidInputError, "int32"),
    (np.ones((2, 2, 128), np.float32), InvalidInputError, "shape"),
])
def test_bad_input_is_refused_with_a_clear_error(bad, error, words):
    with pytest.raises(error, match=words):
        protect(bad)


def test_non_array_input_and_torch_nan_are_refused():
    with pytest.raises(InvalidInputError, match="numpy array or torch tensor"):
        protect([[1.0] * 128])
    with pytest.raises(NonFiniteError):
        protect(torch.full((2, 128), float("nan")))


def test_artifact_refuses_another_recognizer(fr128, fr512):
    Protector("fr128", recognizer_fingerprint=fr128.fingerprint)
    with pytest.raises(IncompatibleError, match="trained for recognizer"):
        Protector("fr128", recognizer_fingerprint=fr512.fingerprint)


def test_unknown_or_unavailable_backends():
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        Protector("fr128", backend="nope")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
            Protector("fr128", backend="onnxruntime", device="cuda")


def _artifact(tmp_path, dim=16):
    torch.manual_seed(0)
    return save_artifact(NoiseGenerator(dim, hidden=8, budget=0.4), tmp_path / "art", {"name": "toy", "fingerprint": "f"})


def test_artifact_checksums_and_consistency(tmp_path):
    path = _artifact(tmp_path)
    assert load_artifact(path).dim == 16
    weights = path / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="no protector artifact"):
        load_artifact(tmp_path / "missing")


def test_artifact_config_must_match_weights(tmp_path):
    import hashlib

    path = _artifact(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["dim"] = 32
    text = json.dumps(cfg).encode()
    (path / "config.json").write_bytes(text)
    sums = (path / "checksums.sha256").read_text().splitlines()
    sums = [f"{hashlib.sha256(text).hexdigest()}  config.json" if s.endswith("config.json") else s for s in sums]
    (path / "checksums.sha256").write_text("\n".join(sums) + "\n")
    with pytest.raises(ArtifactError, match="do not match the config"):
        load_artifact(path)


def test_fp16_onnx_is_close_to_fp32(tmp_path):
    import onnxruntime as ort

    out = tmp_path / "g16.onnx"
    res = CliRunner().invoke(cli, ["export-onnx", "fr128", "--out", str(out), "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(3).standard_normal((32, 128)).astype(np.float32)
    y16 = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"embeddings": x})[0]
    assert y16.dtype == np.float32
    assert np.abs(y16 - protect(x)).max() < 2e-2 * np.abs(x).max()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_cli_protect_streams_in_chunks(tmp_path, emb128, suffix):
    src = tmp_path / f"in{suffix}"
    if suffix == ".npy":
        np.save(src, emb128)
    else:
        np.savez(src, embeddings=emb128)
    dst = tmp_path / f"out{suffix}"
    res = CliRunner().invoke(cli, ["protect", str(src), str(dst), "--chunk", "64"])
    assert res.exit_code == 0, res.output
    got = np.load(dst) if suffix == ".npy" else np.load(dst)["embeddings"]
    np.testing.assert_allclose(got, protect(emb128), atol=1e-6)


def test_cli_protect_fails_cleanly_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((10, 128), np.nan, np.float32))
    dst = tmp_path / "out.npy"
    proc = subprocess.run([sys.executable, "-m", "advface_sdk", "protect", str(bad), str(dst)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not dst.exists() and not list(tmp_path.glob(".out*"))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, other=np.ones((2, 128), np.float32))
    res = CliRunner().invoke(cli, ["protect", str(wrong), str(dst)])
    assert res.exit_code == 2 and "no array 'embeddings'" in res.output


def test_cli_info_shows_the_recognizer():
    res = CliRunner().invoke(cli, ["info", "fr512"])
    assert res.exit_code == 0 and '"dim": 512' in res.output and "fingerprint" in res.output
