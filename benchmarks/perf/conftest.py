"""Fixtures of the ``protect()`` performance suite (pytest-benchmark).

CPU suite, then the summary (``benchmarks/results/perf_cpu.md`` + ``.json``)::

    FACEPRIV_SHARED=/path/to/shared python -m pytest benchmarks/perf/test_perf_cpu.py --benchmark-enable \\
        --benchmark-json=/tmp/perf_cpu_raw.json
    python benchmarks/perf/summarize.py /tmp/perf_cpu_raw.json --out benchmarks/results/perf_cpu

GPU suite: ``benchmarks/perf/gpu_run.sh`` (writes to ``$OUT``). Every benchmark stores what it
measured in ``extra_info`` (kind, backend, batch, device), which ``summarize.py`` groups by.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pytest

BATCHES = (1, 64, 1024, 65536)
SLOW_CALL_S = 0.05  # calls slower than this get a fixed number of rounds instead of pytest-benchmark's calibration


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """The shipped fr128 protector; a same-architecture generator with random weights where none is installed."""
    import torch

    from advface_sdk import load_artifact, save_artifact
    from advface_sdk.artifact import default_artifacts
    from advface_sdk.models.generator import NoiseGenerator

    if "fr128" in default_artifacts():
        return load_artifact("fr128")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("artifact") / "fr128-random"
    return load_artifact(save_artifact(NoiseGenerator(128, 256, 0.8), path, {"name": "fr128", "fingerprint": "random", "dim": 128}))


@pytest.fixture(scope="session")
def embeddings():
    """``embeddings(n)``: n raw 128-d embeddings (float32, unnormalised like a recognizer's output)."""
    z = np.random.default_rng(0).standard_normal((max(BATCHES), 128)).astype(np.float32) * 3.0
    return lambda n: z[:n]


@pytest.fixture(scope="session")
def fr128():
    from facecore.paths import ENV_VAR

    if not os.environ.get(ENV_VAR):
        pytest.skip(f"needs the shared recognizers: set {ENV_VAR}")
    from facecore.recognizers import create_recognizer

    return create_recognizer("fr128")


@pytest.fixture(scope="session")
def aligned_crop():
    """One aligned 112x112 BGR crop: a real LFW face when the data is there, else a fixed random image
    (the recognizer's cost does not depend on the pixels)."""
    from facecore.paths import ENV_VAR

    root = Path(os.environ.get(ENV_VAR, "/nonexistent")) / "data" / "lfw" / "aligned112" / "George_W_Bush"
    if root.is_dir():
        from facecore.images import read_image

        return read_image(sorted(root.iterdir())[0])[None], "LFW George_W_Bush_0001"
    return np.random.default_rng(0).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8), "random pixels"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@pytest.fixture
def measure(benchmark):
    """``measure(fn, kind=..., backend=..., batch=..., device=..., **info)``: benchmark ``fn`` and label it."""

    def run(fn, *, kind: str, backend: str, batch: int, device: str = "cpu", **info):
        benchmark.extra_info.update(kind=kind, backend=backend, batch=int(batch), device=device,
                                    cpu=cpu_name(), cpu_count=os.cpu_count(), loadavg_1m=round(os.getloadavg()[0], 2), **info)
        fn()  # warm-up (first-call allocations, lazy initialisation)
        start = time.perf_counter()
        fn()
        if time.perf_counter() - start > SLOW_CALL_S:
            return benchmark.pedantic(fn, rounds=5, iterations=1, warmup_rounds=0)
        return benchmark(fn)

    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the software and hardware the numbers belong to (read back by summarize.py)."""
    import shlex
    import sys

    import onnxruntime as ort
    import torch

    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = None
    machine_info["perf"] = {
        "command": shlex.join(["python", "-m", "pytest", *sys.argv[1:]]),
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
        "tensorrt": trt_version, "numpy": np.__version__, "python": platform.python_version(),
    }
