"""ONNX Runtime backend (CPU or CUDA execution provider), never silently falling back to CPU."""

from __future__ import annotations

import numpy as np

from facecore.errors import BackendUnavailableError

from .._onnx_export import INPUT, OUTPUT

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, artifact, device: str = "cpu", threads: int | None = None, provider_options: dict | None = None):
        import onnxruntime as ort

        kind = device.split(":")[0]
        provider = PROVIDERS.get(kind)
        if provider is None:
            raise BackendUnavailableError(f"onnxruntime backend: unknown device {device!r}; use cpu, cuda or tensorrt")
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"onnxruntime has no {provider} here (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu (pip install 'face-privacy-sdk[gpu]') on a CUDA machine or use device='cpu'"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        options = dict(provider_options or {})
        if kind != "cpu" and ":" in device:
            options.setdefault("device_id", int(device.split(":")[1]))
        providers = [(provider, options)] if kind != "cpu" else [provider]
        self.session = ort.InferenceSession(str(artifact.onnx_path), opts, providers=providers)
        active = self.session.get_providers()
        if not active or active[0] != provider:
            raise BackendUnavailableError(f"onnxruntime did not activate {provider} (active: {active}); refusing to fall back")
        self.provider = provider
        self.device = device

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: x})[0]
