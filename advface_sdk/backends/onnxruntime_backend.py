"""ONNX Runtime backend: CPU, CUDA or TensorRT execution provider, never silently falling back to CPU.

Session options (threads, spinning, graph optimisation, execution mode) and provider options
(CUDA; TensorRT with its engine/timing cache and fp16) are keyword arguments of the backend,
passed through ``Protector(..., backend="onnxruntime", **options)``. On GPU providers torch CUDA
tensors are bound in place (IO binding) instead of being copied through the host.
"""

from __future__ import annotations

import numpy as np

from facecore.errors import BackendUnavailableError, InvalidInputError

from .._onnx_export import INPUT, OUTPUT, generator_to_onnx

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
GRAPH_OPTIMIZATION = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                      "all": "ORT_ENABLE_ALL"}
#: rows per session call on the CPU provider: larger batches are split so activations stay in cache
#: (measured on 2 shared cores: 65,536 rows run 20-40 % faster in chunks of 1,024-4,096 than in one call)
CPU_CHUNK = 2048


def _session_options(ort, threads, spinning, graph_optimization, execution_mode):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if graph_optimization not in GRAPH_OPTIMIZATION:
        raise InvalidInputError(f"graph_optimization must be one of {sorted(GRAPH_OPTIMIZATION)}, got {graph_optimization!r}")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION[graph_optimization])
    if execution_mode not in ("sequential", "parallel"):
        raise InvalidInputError(f"execution_mode must be 'sequential' or 'parallel', got {execution_mode!r}")
    opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def _provider_options(kind: str, index: int, precision: str, dim: int) -> dict:
    """Defaults for the GPU providers; ``provider_options`` given by the caller override them."""
    if kind == "cuda":  # no TF32: fp32 results must match torch within 1e-5
        return {"device_id": index, "use_tf32": 0}
    from facecore.paths import cache_dir

    cache = str(cache_dir() / "ort_tensorrt")
    return {"device_id": index, "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache, "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
            "trt_profile_min_shapes": f"{INPUT}:1x{dim}", "trt_profile_opt_shapes": f"{INPUT}:1024x{dim}",
            "trt_profile_max_shapes": f"{INPUT}:65536x{dim}"}


class OnnxRuntimeBackend:
    """The protection graph in an ONNX Runtime session.

    ``device``: ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]`` (the execution provider). ``precision="fp16"``
    (GPU providers) runs the fp16 graph behind float32 inputs/outputs and enables TensorRT fp16.
    ``threads``/``spinning``/``graph_optimization``/``execution_mode`` set the session options;
    ``chunk`` caps the rows per session call (default: 2,048 on CPU, unlimited on GPU).

    Defaults follow measurements on 2 shared CPU cores (``benchmarks/results/perf_cpu.md``): one
    intra-op thread (``threads=None``: ONNX Runtime's choice, one per physical core) since one core
    already protects ~300,000 embeddings/s and a second one slowed batch 1 without speeding up large
    batches, leaving the cores to the recognizer; thread spinning off (spinning threads competing with
    other work cut large-batch throughput by a third or more); all graph optimisations; sequential execution.
    """

    name = "onnxruntime"

    def __init__(self, artifact, device: str = "cpu", threads: int | None = 1, provider_options: dict | None = None,
                 precision: str = "fp32", spinning: bool | None = False, graph_optimization: str = "all",
                 execution_mode: str = "sequential", chunk: int | None = None):
        import onnxruntime as ort

        kind, _, index = device.partition(":")
        provider = PROVIDERS.get(kind)
        if provider is None or (index and not index.isdigit()):
            raise BackendUnavailableError(f"onnxruntime backend: unknown device {device!r}; use cpu, cuda[:N] or tensorrt[:N]")
        if precision not in ("fp32", "fp16"):
            raise InvalidInputError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and kind == "cpu":
            raise InvalidInputError("precision='fp16' needs a GPU provider (device='cuda' or 'tensorrt'); the CPU provider runs fp32")
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"onnxruntime has no {provider} here (available: {ort.get_available_providers()}); "
                "install onnxruntime-gpu (pip install 'face-privacy-sdk[gpu]') on a CUDA machine or use device='cpu'"
            )
        opts = _session_options(ort, threads, spinning, graph_optimization, execution_mode)
        self.index = int(index or 0)
        if kind == "cpu":
            providers = [provider]
        else:
            options = {**_provider_options(kind, self.index, precision, artifact.dim), **(provider_options or {})}
            providers = [(provider, options)]
            if kind == "tensorrt":  # nodes TensorRT cannot take run on CUDA, never on the CPU
                providers.append(("CUDAExecutionProvider", {"device_id": options["device_id"]}))
        # the verified bytes (checked against the weights at load), never the file again: no swap after the check
        model = (getattr(artifact, "onnx_bytes", b"") or generator_to_onnx(artifact.state, artifact.config).SerializeToString()) \
            if precision == "fp32" else generator_to_onnx(artifact.state, artifact.config, precision).SerializeToString()
        self.session = ort.InferenceSession(model, opts, providers=providers)
        active = self.session.get_providers()
        if not active or active[0] != provider:
            raise BackendUnavailableError(f"onnxruntime did not activate {provider} (active: {active}); refusing to fall back")
        self.provider = provider
        self.device = device
        self.precision = precision
        self.chunk = int(chunk) if chunk else (CPU_CHUNK if kind == "cpu" else None)
        if self.chunk is not None and self.chunk <= 0:
            raise InvalidInputError(f"chunk must be positive, got {chunk}")

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.chunk is None or len(x) <= self.chunk:
            return self.session.run([OUTPUT], {INPUT: x})[0]
        out = np.empty_like(x)
        for start in range(0, len(x), self.chunk):
            out[start:start + self.chunk] = self.session.run([OUTPUT], {INPUT: x[start:start + self.chunk]})[0]
        return out

    def run_torch(self, x):
        """Torch tensors: bound in place on the GPU providers (IO binding); through the host on the CPU provider."""
        import torch

        if self.provider == PROVIDERS["cpu"]:
            return torch.from_numpy(self.run(x.detach().to("cpu", torch.float32).numpy())).to(x.device)
        device = torch.device("cuda", self.index)
        x = x.detach().to(device, torch.float32).contiguous()
        out = torch.empty_like(x)
        torch.cuda.current_stream(device).synchronize()  # ORT works on its own stream: inputs must be ready
        binding = self.session.io_binding()
        binding.bind_input(INPUT, "cuda", self.index, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT, "cuda", self.index, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)  # returns once the providers' streams are synchronised
        return out
