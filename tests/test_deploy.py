"""Deployment: ``advface-cli export-trt``, the TensorRT backend and ONNX Runtime providers.

CPU machines check the clean failures (missing TensorRT / GPU / provider), provider verification,
session options and chunking, and the engine sidecar checks. Tests marked ``gpu`` / ``tensorrt``
build and run real engines and CUDA sessions; they skip, with the reason, where those are missing.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from advface_sdk import Protector, save_artifact
from advface_sdk import _tensorrt_build as tb
from advface_sdk.artifact import load_artifact
from advface_sdk.backends import create_backend
from advface_sdk.cli import main
from advface_sdk.models.generator import NoiseGenerator
from facecore.errors import ArtifactError, BackendUnavailableError, IncompatibleError, InvalidInputError

MISSING = tb.missing_components()
HAS_CUDA = torch.cuda.is_available()
needs_tensorrt = pytest.mark.skipif(bool(MISSING), reason=f"needs TensorRT on a CUDA GPU: {'; '.join(MISSING)}")
needs_ort_cuda = pytest.mark.skipif(not HAS_CUDA or "CUDAExecutionProvider" not in ort.get_available_providers(),
                                    reason="needs onnxruntime-gpu (CUDA execution provider) and a CUDA GPU")


def _artifact(path, seed: int):
    torch.manual_seed(seed)
    return load_artifact(save_artifact(NoiseGenerator(128), path, {"name": "fr128", "fingerprint": "x", "dim": 128}))


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return _artifact(tmp_path_factory.mktemp("art") / "a", 0)


@pytest.fixture(scope="module")
def z():
    x = np.random.default_rng(0).standard_normal((600, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(art, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return art.build_generator()(torch.from_numpy(x)).numpy()


def _error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------- export-trt and the TensorRT backend on any machine
def test_export_trt_names_what_is_missing(art, tmp_path):
    if not MISSING:
        pytest.skip("TensorRT and a GPU are present: the tensorrt-marked tests cover export-trt")
    out = tmp_path / "p.engine"
    result = CliRunner().invoke(main, ["export-trt", str(art.directory), "--out", str(out)])
    assert result.exit_code == 2
    assert _error_line(result) == "error: " + "; ".join(MISSING)
    if not HAS_CUDA:
        assert "no CUDA GPU visible" in result.stderr
    assert not out.exists() and not tb.sidecar_path(out).exists()


@pytest.mark.parametrize("args, message", [
    (["--min-batch", "8", "--opt-batch", "4"], "1 <= min <= opt <= max"),
    (["--max-batch", "0"], "1 <= min <= opt <= max"),
    (["--device", "cpu"], "TensorRT runs on a CUDA device"),
])
def test_export_trt_rejects_bad_options_first(art, tmp_path, args, message):
    result = CliRunner().invoke(main, ["export-trt", str(art.directory), "--out", str(tmp_path / "p.engine"), *args])
    assert result.exit_code == 2
    assert message in _error_line(result)


def test_tensorrt_backend_unavailable_is_one_clear_error(art):
    if not MISSING:
        pytest.skip("TensorRT and a GPU are present")
    with pytest.raises(BackendUnavailableError) as info:
        Protector(art, backend="tensorrt", device="cuda")
    assert str(info.value) == "; ".join(MISSING)
    with pytest.raises(InvalidInputError, match="CUDA device"):
        Protector(art, backend="tensorrt", device="cpu")


def _sidecar(art, **changes) -> dict:
    meta = {"format": tb.FORMAT, "tensorrt_version": "10.9.0.34", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
            "dim": art.dim, "artifact": {"name": art.directory.name, "weights_sha256": tb.artifact_weights_sha256(art)}}
    meta.update(changes)
    return meta


def test_sidecar_checks_refuse_other_tensorrt_gpu_or_artifact(art, tmp_path):
    here = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    tb.check_engine(_sidecar(art), "10.9.0.34", here, art)
    with pytest.raises(IncompatibleError, match="TensorRT 10.8.0.1, this machine has TensorRT 10.9.0.34"):
        tb.check_engine(_sidecar(art, tensorrt_version="10.8.0.1"), "10.9.0.34", here, art)
    with pytest.raises(IncompatibleError, match="built for NVIDIA A100"):
        tb.check_engine(_sidecar(art, gpu={"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}), "10.9.0.34", here, art)
    with pytest.raises(IncompatibleError, match=r"compute capability 8\.9"):
        tb.check_engine(_sidecar(art, gpu={"name": here["name"], "compute_capability": "8.9"}), "10.9.0.34", here, art)
    other = _artifact(tmp_path / "other", 1)
    with pytest.raises(IncompatibleError, match="not from other"):
        tb.check_engine(_sidecar(art), "10.9.0.34", here, other)
    engine = tmp_path / "p.engine"
    with pytest.raises(ArtifactError, match="sidecar written by advface-cli export-trt"):
        tb.read_sidecar(engine)
    tb.sidecar_path(engine).write_text(json.dumps({"format": "something/0"}))
    with pytest.raises(ArtifactError, match="unknown sidecar format"):
        tb.read_sidecar(engine)


# ---------------------------------------------------------------- ONNX Runtime providers and options
def test_onnxruntime_cpu_provider_is_verified_and_matches_torch(art, z):
    backend = create_backend("onnxruntime", art, device="cpu")
    assert backend.provider == "CPUExecutionProvider"
    assert backend.session.get_providers()[0] == "CPUExecutionProvider"
    np.testing.assert_allclose(backend.run(z), _reference(art, z), atol=1e-5)


@pytest.mark.parametrize("device, provider", [("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")])
def test_onnxruntime_gpu_provider_absent_raises(art, device, provider):
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is available here")
    with pytest.raises(BackendUnavailableError, match=provider):
        Protector(art, backend="onnxruntime", device=device)


def test_onnxruntime_session_options_and_chunking(art, z):
    tuned = create_backend("onnxruntime", art, threads=1, spinning=True, graph_optimization="basic", chunk=128)
    opts = tuned.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    default = create_backend("onnxruntime", art)
    defaults = default.session.get_session_options()
    assert default.chunk == 2048 and defaults.intra_op_num_threads == 1
    assert defaults.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    whole = create_backend("onnxruntime", art, chunk=10_000).run(z)
    np.testing.assert_allclose(tuned.run(z), whole, atol=1e-6)  # 600 rows in chunks of 128 (last one 88)
    np.testing.assert_allclose(whole, _reference(art, z), atol=1e-5)
    protector = Protector(art, backend="onnxruntime", threads=1, chunk=64)
    np.testing.assert_allclose(protector.protect(z[:100].astype(np.float64)), _reference(art, z[:100]), atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"graph_optimization": "max"}, "graph_optimization"),
    ({"execution_mode": "async"}, "execution_mode"),
    ({"precision": "fp16"}, "needs a GPU provider"),
    ({"chunk": -1}, "chunk must be positive"),
])
def test_onnxruntime_bad_options(art, options, message):
    with pytest.raises(InvalidInputError, match=message):
        create_backend("onnxruntime", art, **options)


@pytest.mark.gpu
@needs_ort_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("fp16", 1e-3)])
def test_onnxruntime_cuda_numpy_and_iobinding(art, z, precision, tol):
    protector = Protector(art, backend="onnxruntime", device="cuda", precision=precision)
    assert protector.backend("onnxruntime", "cuda").session.get_providers()[0] == "CUDAExecutionProvider"
    ref = _reference(art, z)
    np.testing.assert_allclose(protector.protect(z), ref, atol=tol)
    x = torch.from_numpy(z).cuda()
    out = protector.protect(x)
    assert out.is_cuda and out.dtype == torch.float32
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=tol)


# ---------------------------------------------------------------- real engines (TensorRT on a CUDA GPU)
@pytest.fixture(scope="module")
def engines(art, tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    cache = root / "timing.cache"
    out = {}
    for precision in ("fp32", "fp16"):
        result = CliRunner().invoke(main, ["export-trt", str(art.directory), "--out", str(root / f"{precision}.engine"),
                                           "--min-batch", "1", "--opt-batch", "64", "--max-batch", "256",
                                           "--precision", precision, "--workspace-mb", "256", "--timing-cache", str(cache)])
        assert result.exit_code == 0, result.output + result.stderr
        out[precision] = root / f"{precision}.engine"
    return out


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-5), ("fp16", 1e-3)])
def test_engine_matches_torch_with_chunking(art, z, engines, precision, tol):
    import tensorrt as trt

    meta = tb.read_sidecar(engines[precision])
    assert meta["tensorrt_version"] == trt.__version__ and meta["precision"] == precision
    assert meta["gpu"] == tb.gpu_info(0) and meta["shapes"]["max"] == [256, 128]
    protector = Protector(art, backend="tensorrt", device="cuda", engine=str(engines[precision]))
    backend = protector.backend("tensorrt", "cuda")
    assert (backend.min_batch, backend.max_batch) == (1, 256)
    ref = _reference(art, z)
    out = protector.protect(z)  # 600 rows > max 256: three chunks
    np.testing.assert_allclose(out, ref, atol=tol)
    np.testing.assert_allclose(protector.protect(z[0]), ref[0], atol=tol)
    if precision == "fp16":  # half-precision rounding is visible: the engine did not silently run fp32
        assert np.abs(out - ref).max() > 5e-6


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
def test_engine_zero_copy_on_the_callers_stream(art, z, engines):
    backend = create_backend("tensorrt", art, device="cuda", engine=str(engines["fp32"]))
    x = torch.from_numpy(z).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = backend.run_torch(x)  # x is float32 and contiguous: bound as is, no copy
    side.synchronize()
    assert out.is_cuda and out.shape == x.shape and out.data_ptr() != x.data_ptr()
    np.testing.assert_allclose(out.cpu().numpy(), _reference(art, z), atol=1e-5)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt
def test_engine_refused_after_sidecar_or_engine_edits(art, engines, tmp_path):
    import shutil

    engine = tmp_path / "copy.engine"
    shutil.copy(engines["fp32"], engine)
    meta = tb.read_sidecar(engines["fp32"])
    assert meta["timing_cache"] in ("new", "loaded")
    for change, error in [({"tensorrt_version": "9.0.0"}, "TensorRT 9.0.0"),
                          ({"gpu": {"name": "Other GPU", "compute_capability": "7.5"}}, "built for Other GPU")]:
        tb.sidecar_path(engine).write_text(json.dumps({**meta, **change}))
        with pytest.raises(IncompatibleError, match=error):
            Protector(art, backend="tensorrt", device="cuda", engine=str(engine))
    tb.sidecar_path(engine).write_text(json.dumps(meta))
    engine.write_bytes(engine.read_bytes()[:-16])
    with pytest.raises(ArtifactError, match="checksum"):
        Protector(art, backend="tensorrt", device="cuda", engine=str(engine))
    with pytest.raises(IncompatibleError, match="not from other"):
        Protector(_artifact(tmp_path / "other", 1), backend="tensorrt", device="cuda", engine=str(engines["fp32"]))
    # the second build reused the timing cache written by the first
    assert tb.read_sidecar(engines["fp16"])["timing_cache"] == "loaded"
