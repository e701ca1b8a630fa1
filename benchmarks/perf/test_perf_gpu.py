"""GPU benchmarks: ``protect()`` on CUDA tensors per backend and batch (torch eager, ONNX Runtime CUDA,
TensorRT where installed), numpy through the host, the generator under CUDA-graph replay and
``torch.compile``, and fr128 on the same GPU (facecore's torch conversion of its ONNX graph).
Every timed call ends with ``torch.cuda.synchronize()``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from advface_sdk import Protector

from .conftest import BATCHES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"


def _synced(fn):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


@pytest.fixture(scope="module")
def on_gpu(embeddings):
    return lambda n: torch.from_numpy(embeddings(n)).cuda()


@pytest.mark.parametrize("batch", BATCHES)
def test_protect_torch_eager(measure, artifact, on_gpu, batch):
    protector, x = Protector(artifact, backend="torch", device="cuda"), on_gpu(batch)
    measure(_synced(lambda: protector.protect(x)), kind="protect", backend="torch eager, cuda tensors", batch=batch, device=DEVICE)


@pytest.mark.parametrize("batch", BATCHES)
def test_protect_torch_numpy(measure, artifact, embeddings, batch):
    protector, x = Protector(artifact, backend="torch", device="cuda"), embeddings(batch)
    measure(lambda: protector.protect(x), kind="protect", backend="torch eager, numpy in/out (host copies)", batch=batch,
            device=DEVICE)


@pytest.mark.parametrize("batch", BATCHES)
def test_generator_cuda_graph(measure, artifact, on_gpu, batch):
    """The generator captured once per batch size and replayed (the floor a graph-capturing backend could reach)."""
    model, x = artifact.build_generator().cuda(), on_gpu(batch)
    static = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            model(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = model(static)

    def replay():
        static.copy_(x)
        graph.replay()
        return out

    measure(_synced(replay), kind="model", backend="torch CUDA graph replay (generator only)", batch=batch, device=DEVICE)


@pytest.mark.skipif(os.environ.get("PERF_SKIP_COMPILE") == "1", reason="PERF_SKIP_COMPILE=1")
@pytest.mark.parametrize("batch", BATCHES)
def test_generator_torch_compile(measure, artifact, on_gpu, batch):
    """``torch.compile`` (default mode) of the generator, one static shape per batch size."""
    model, x = artifact.build_generator().cuda(), on_gpu(batch)
    compiled = torch.compile(model, dynamic=False)
    try:
        with torch.no_grad():
            compiled(x)
    except Exception as exc:  # no working Triton / compiler on this machine: report, don't fail the suite
        pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {exc}"[:300])

    def run():
        with torch.no_grad():
            return compiled(x)

    measure(_synced(run), kind="model", backend="torch.compile (generator only)", batch=batch, device=DEVICE)


@pytest.mark.parametrize("batch", BATCHES)
def test_protect_onnxruntime_cuda(measure, artifact, on_gpu, batch):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider (install onnxruntime-gpu)")
    protector, x = Protector(artifact, backend="onnxruntime", device="cuda"), on_gpu(batch)
    measure(_synced(lambda: protector.protect(x)), kind="protect", backend="onnxruntime cuda, IO binding", batch=batch,
            device=DEVICE)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("batch", BATCHES)
def test_protect_tensorrt(measure, artifact, on_gpu, batch, precision):
    from advface_sdk._tensorrt_build import missing_components

    if missing_components():
        pytest.skip("; ".join(missing_components()))
    protector, x = Protector(artifact, backend="tensorrt", device="cuda", precision=precision), on_gpu(batch)
    measure(_synced(lambda: protector.protect(x)), kind="protect", backend=f"tensorrt {precision}, cuda tensors", batch=batch,
            device=DEVICE)


@pytest.mark.parametrize("batch", [1, 256])
def test_recognizer_fr128_gpu(measure, fr128, aligned_crop, batch):
    """fr128 on the GPU through facecore's torch conversion of its ONNX graph (eager, fp32)."""
    crop, source = aligned_crop
    module = fr128.to_torch().cuda()
    rgb = np.ascontiguousarray(crop[..., ::-1].transpose(0, 3, 1, 2)) / 255.0
    images = torch.from_numpy(np.repeat(rgb, batch, axis=0).astype(np.float32)).cuda()

    def run():
        with torch.no_grad():
            return module(images)

    measure(_synced(run), kind="recognizer", backend="fr128 (torch conversion, cuda)", batch=batch, device=DEVICE, crop=source)
