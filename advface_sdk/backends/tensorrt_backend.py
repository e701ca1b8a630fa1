"""TensorRT backend: a serialized engine run zero-copy on torch CUDA tensors, on the caller's stream.

``Protector(model, backend="tensorrt", device="cuda", engine="protector.engine")`` runs an engine
written by ``advface-cli export-trt``; without ``engine`` one is built once (``precision``,
``max_batch``) and cached under ``$FACEPRIV_CACHE/tensorrt``. The engine's sidecar must name this
TensorRT version, this GPU and this artifact, otherwise the engine is refused.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from facecore.artifacts import sha256_file
from facecore.errors import ArtifactError, IncompatibleError, ModelLoadError

from .. import _tensorrt_build as tb
from .._onnx_export import INPUT, OUTPUT


def default_engine_path(artifact, precision: str, max_batch: int, tensorrt_version: str, gpu: dict) -> Path:
    """Where an automatically built engine for this artifact, GPU and TensorRT version is cached."""
    from facecore.paths import cache_dir

    cc = gpu["compute_capability"].replace(".", "")
    tag = f"{artifact.directory.name}-{tb.artifact_weights_sha256(artifact)[:12]}-{precision}-max{max_batch}"
    return cache_dir() / "tensorrt" / f"{tag}-trt{tensorrt_version}-sm{cc}.engine"


def _verified_sidecar(engine: Path, tensorrt_version: str, gpu: dict, artifact) -> dict:
    """The engine's sidecar once the engine is found, intact and made for this TensorRT, GPU and artifact."""
    if not engine.is_file():
        raise ArtifactError(f"TensorRT engine not found: {engine} (write one with advface-cli export-trt)")
    meta = tb.read_sidecar(engine)
    tb.check_engine(meta, tensorrt_version, gpu, artifact)
    if sha256_file(engine) != meta.get("engine_sha256"):
        raise ArtifactError(f"{engine}: checksum does not match its sidecar (file corrupt or replaced)")
    return meta


class TensorRTBackend:
    """Runs a protector's TensorRT engine; batches above the profile's maximum are chunked.

    One execution context per instance: calls from several threads are serialised by a lock.
    """

    name = "tensorrt"

    def __init__(self, artifact, device: str = "cuda", engine: str | Path | None = None, precision: str = "fp32",
                 max_batch: int = 65536, workspace_mb: int = 1024):
        index = tb.cuda_index(device)
        trt = tb.require_tensorrt()
        import torch

        self.device = torch.device("cuda", index)
        gpu = tb.gpu_info(index)
        if engine is None:
            engine = default_engine_path(artifact, precision, max_batch, trt.__version__, gpu)
            try:
                _verified_sidecar(engine, trt.__version__, gpu, artifact)
            except ArtifactError:  # not cached yet, or cached for something else: build it once
                tb.build_engine(artifact, engine, 1, min(1024, max_batch), max_batch, precision, workspace_mb, device=index)
        engine = Path(engine)
        self.meta = _verified_sidecar(engine, trt.__version__, gpu, artifact)
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(index):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(engine.read_bytes())
            if self.engine is None:
                raise ModelLoadError(f"TensorRT could not deserialize {engine} (see its log above)")
            self.context = self.engine.create_execution_context()
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {INPUT, OUTPUT}:
            raise IncompatibleError(f"{engine} has tensors {sorted(names)}, expected {INPUT!r} and {OUTPUT!r}")
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUT, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.dim = artifact.dim
        self.path = engine
        self._lock = threading.Lock()

    def run_torch(self, x):
        """Protect ``(N, dim)`` on the GPU: enqueued on ``torch.cuda.current_stream()``, no host copies."""
        import torch

        x = x.to(self.device, torch.float32).contiguous()
        out = torch.empty_like(x)
        with torch.cuda.device(self.device), self._lock:
            stream = torch.cuda.current_stream(self.device).cuda_stream
            for start in range(0, len(x), self.max_batch):
                self._enqueue(x[start:start + self.max_batch], out[start:start + self.max_batch], stream)
        return out

    def _enqueue(self, x, out, stream: int) -> None:
        import torch

        n = len(x)
        if n < self.min_batch:  # pad up to the profile's minimum; padding rows are discarded
            x = torch.cat([x, torch.ones(self.min_batch - n, x.shape[1], device=x.device, dtype=x.dtype)])
            full = torch.empty_like(x)
        else:
            full = out
        if not self.context.set_input_shape(INPUT, tuple(x.shape)):
            raise ModelLoadError(f"TensorRT rejected input shape {tuple(x.shape)} (profile {self.min_batch}..{self.max_batch})")
        self.context.set_tensor_address(INPUT, x.data_ptr())
        self.context.set_tensor_address(OUTPUT, full.data_ptr())
        if not self.context.execute_async_v3(stream):
            raise ModelLoadError("TensorRT execution failed (see its log above)")
        if full is not out:
            out.copy_(full[:n])

    def run(self, x: np.ndarray) -> np.ndarray:
        """numpy path: staged through a torch CUDA tensor."""
        import torch

        return self.run_torch(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).cpu().numpy()
