"""ONNX → serialized TensorRT engine for a protector artifact, plus the JSON sidecar that guards it.

The engine takes a dynamic batch (one optimisation profile, min/opt/max rows) of float32
embeddings. ``precision="fp16"`` compiles the fp16 ONNX graph (float32 inputs and outputs,
half-precision math inside) into a *strongly typed* network, so TensorRT runs exactly the
precision written in the graph. No FP16 builder flag is used: strongly typed networks take no
precision flags, and TensorRT 11 removed that flag (a build relying on it would silently come out
fp32). TF32, on by default in TensorRT, is switched off so an fp32 engine computes in true fp32.

The sidecar (``ENGINE.json``) records what an engine is only valid for — TensorRT version, GPU
name and compute capability — with the shapes, precision and checksums of the ONNX graph, the
artifact weights and the engine itself; :func:`check_engine` refuses any mismatch.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from facecore.artifacts import sha256_bytes, sha256_file
from facecore.errors import ArtifactError, BackendUnavailableError, IncompatibleError, InvalidInputError, ModelLoadError

from ._onnx_export import INPUT, OUTPUT, generator_to_onnx

FORMAT = "advface-tensorrt-engine/1"
PRECISIONS = ("fp32", "fp16")
TENSORRT_MISSING = "TensorRT is not installed (pip install 'face-privacy-sdk[tensorrt]')"
GPU_MISSING = "no CUDA GPU visible"


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` → ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def missing_components() -> list[str]:
    """What this machine lacks to build or run engines: ``[]``, or readable reasons."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append(TENSORRT_MISSING)
    import torch

    if not torch.cuda.is_available():
        missing.append(GPU_MISSING)
    return missing


def require_tensorrt():
    """The ``tensorrt`` module, or :class:`BackendUnavailableError` naming every missing part in one line."""
    missing = missing_components()
    if missing:
        raise BackendUnavailableError("; ".join(missing))
    import tensorrt

    return tensorrt


def cuda_index(device: str | int) -> int:
    """``"cuda"`` / ``"cuda:1"`` / ``1`` → device index; anything else is an input error."""
    if isinstance(device, int):
        return device
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InvalidInputError(f"TensorRT runs on a CUDA device: pass device='cuda' or 'cuda:N', not {device!r}")
    return int(index or 0)


def gpu_info(index: int = 0) -> dict:
    """Name and compute capability of CUDA device ``index`` (what an engine is compiled for)."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise InvalidInputError(
            f"batch sizes must satisfy 1 <= min <= opt <= max, got min={min_batch}, opt={opt_batch}, max={max_batch}")


def read_sidecar(engine: str | Path) -> dict:
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: every engine needs the sidecar written by advface-cli export-trt")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("gpu", {}), dict) \
            or not isinstance(meta.get("artifact", {}), dict):
        raise ArtifactError(f"{path} is not an engine sidecar (damaged or edited); rebuild it with advface-cli export-trt")
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unknown sidecar format {meta.get('format')!r}, expected {FORMAT}")
    return meta


def check_engine(meta: dict, tensorrt_version: str, gpu: dict, artifact=None) -> None:
    """Refuse an engine built by another TensorRT, for another GPU, or from another artifact."""
    built = meta.get("gpu", {})
    rebuild = "rebuild it here with advface-cli export-trt"
    if meta.get("tensorrt_version") != tensorrt_version:
        raise IncompatibleError(f"engine was built with TensorRT {meta.get('tensorrt_version')}, this machine has "
                                f"TensorRT {tensorrt_version}: engines only run on the version that built them; {rebuild}")
    if (built.get("name"), built.get("compute_capability")) != (gpu["name"], gpu["compute_capability"]):
        raise IncompatibleError(f"engine was built for {built.get('name')} (compute capability {built.get('compute_capability')}), "
                                f"this GPU is {gpu['name']} ({gpu['compute_capability']}); {rebuild}")
    if artifact is not None:
        weights = artifact_weights_sha256(artifact)
        if meta.get("dim") != artifact.dim or meta.get("artifact", {}).get("weights_sha256") != weights:
            raise IncompatibleError(f"engine was built from artifact {meta.get('artifact', {}).get('name')} "
                                    f"({meta.get('dim')}-d), not from {artifact.directory.name} ({artifact.dim}-d); {rebuild}")


def artifact_weights_sha256(artifact) -> str:
    from .artifact import WEIGHTS

    return sha256_file(artifact.directory / WEIGHTS)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_engine(artifact, out: str | Path, min_batch: int = 1, opt_batch: int = 1024, max_batch: int = 65536,
                 precision: str = "fp32", workspace_mb: int = 1024, timing_cache: str | Path | None = None,
                 device: str | int = "cuda") -> dict:
    """Compile ``artifact`` into a TensorRT engine at ``out`` (+ sidecar); returns the sidecar dict.

    ``timing_cache``: a file to load layer timings from (when it exists and matches this GPU and
    TensorRT) and to save them to afterwards, which makes rebuilds fast.
    """
    check_batches(min_batch, opt_batch, max_batch)
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if workspace_mb <= 0:
        raise InvalidInputError(f"workspace_mb must be positive, got {workspace_mb}")
    index = cuda_index(device)
    trt = require_tensorrt()
    import torch

    onnx_bytes = generator_to_onnx(artifact.state, artifact.config, precision).SerializeToString()
    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(index):
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelLoadError(f"TensorRT could not parse the protection graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 must stay fp32 (torch parity within 1e-5)
        dim = artifact.dim
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT, (min_batch, dim), (opt_batch, dim), (max_batch, dim))
        config.add_optimization_profile(profile)
        cache_state = _attach_timing_cache(config, timing_cache)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError("TensorRT failed to build the engine (see its log above); try a larger --workspace-mb")
        engine_bytes = bytes(serialized)
        if timing_cache is not None:
            _atomic_write(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
        gpu = gpu_info(index)
    out = Path(out)
    meta = {
        "format": FORMAT, "tensorrt_version": trt.__version__, "gpu": gpu, "precision": precision,
        "input": INPUT, "output": OUTPUT, "dim": dim,
        "shapes": {"min": [min_batch, dim], "opt": [opt_batch, dim], "max": [max_batch, dim]},
        "workspace_mb": int(workspace_mb), "timing_cache": cache_state,
        "onnx_sha256": sha256_bytes(onnx_bytes),
        "engine_sha256": sha256_bytes(engine_bytes),
        "artifact": {"name": artifact.directory.name, "weights_sha256": artifact_weights_sha256(artifact),
                     "recognizer": artifact.recognizer_fingerprint},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _atomic_write(out, engine_bytes)
    _atomic_write(sidecar_path(out), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return meta


def _attach_timing_cache(config, path: str | Path | None) -> str:
    """Load ``path`` into the builder config when possible; returns what happened (for the sidecar)."""
    data, state = b"", "none"
    if path is not None:
        path = Path(path)
        data, state = (path.read_bytes(), "loaded") if path.is_file() else (b"", "new")
    try:
        cache = config.create_timing_cache(data)
        usable = cache is not None and config.set_timing_cache(cache, False)
    except Exception:  # unreadable bytes: TensorRT raises instead of returning None
        usable = False
    if not usable:
        # a cache written by another GPU or TensorRT version: start a fresh one rather than fail
        cache, state = config.create_timing_cache(b""), "replaced (built elsewhere)"
        config.set_timing_cache(cache, False)
    return state
