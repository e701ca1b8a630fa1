"""CPU benchmarks: ``protect()`` per backend and batch, ONNX Runtime session options, the fr128
recognizer on one aligned crop, and the baseline template-protection methods, in one run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advface_sdk import Protector
from advface_sdk._onnx_export import INPUT, OUTPUT

from .conftest import BATCHES


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", BATCHES)
def test_protect_onnxruntime(measure, artifact, embeddings, batch, threads):
    protector = Protector(artifact, backend="onnxruntime", threads=threads)
    x = embeddings(batch)
    measure(lambda: protector.protect(x), kind="protect", backend=f"onnxruntime cpu, {threads} thread(s)", batch=batch,
            threads=threads)


@pytest.mark.parametrize("batch", [1024])
def test_protect_keyed_onnxruntime(measure, artifact, embeddings, batch):
    """Keyed protect() (AdvFace graph, then the deployment key's rotation) on one core; target >= 100k embeddings/s."""
    from advface_sdk.keys import DeploymentKey

    protector = Protector(artifact, backend="onnxruntime", threads=1, key=DeploymentKey.generate(artifact.protector_id))
    x = embeddings(batch)
    measure(lambda: protector.protect(x), kind="protect", backend="onnxruntime cpu, 1 thread(s), deployment key",
            batch=batch, threads=1)


@pytest.mark.parametrize("buckets", [64, 256])
@pytest.mark.parametrize("batch", [1024])
def test_protect_bucketed_onnxruntime(measure, artifact, embeddings, batch, buckets):
    """Bucketed keyed protect() (1:N mode: each row's id hashed to its bucket, that bucket's rotation) on one core,
    every row under its own id; side by side with the plain key's row above."""
    from advface_sdk.keys import DeploymentKey

    key = DeploymentKey.generate(artifact.protector_id, buckets)
    protector = Protector(artifact, backend="onnxruntime", threads=1, key=key)
    x = embeddings(batch)
    ids = [f"user-{i:09d}" for i in range(batch)]
    measure(lambda: protector.protect(x, users=ids), kind="protect",
            backend=f"onnxruntime cpu, 1 thread(s), bucketed key (K={buckets})", batch=batch, threads=1)


@pytest.mark.parametrize("salt", ["new", "same"])
@pytest.mark.parametrize("name", ["fr128", "fr512"])
def test_protect_salted_onnxruntime(measure, name, salt):
    """One 1:1 request (one embedding) with a per-user salt on one core: ``new`` derives the user's rotation
    (a d×d QR) on every call, as for a user's first request; ``same`` reuses it (cached)."""
    from advface_sdk.artifact import default_artifacts
    from advface_sdk.keys import DeploymentKey, new_salt

    if name not in default_artifacts():
        pytest.skip(f"the {name} protector is not installed")
    protector = Protector(name, backend="onnxruntime", threads=1)
    protector = Protector(name, backend="onnxruntime", threads=1, key=DeploymentKey.generate(protector.artifact.protector_id))
    x = np.random.default_rng(0).standard_normal((1, protector.dim)).astype(np.float32) * 3.0
    fixed = new_salt()
    measure(lambda: protector.protect(x, salts=new_salt() if salt == "new" else fixed), kind="protect",
            backend=f"onnxruntime cpu, 1 thread(s), {protector.dim}-d, salted ({salt} salt per call)", batch=1, threads=1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch", BATCHES)
def test_protect_torch(measure, artifact, embeddings, batch, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        protector = Protector(artifact, backend="torch")
        x = embeddings(batch)
        measure(lambda: protector.protect(x), kind="protect", backend=f"torch cpu, {threads} thread(s)", batch=batch,
                threads=threads)
    finally:
        torch.set_num_threads(previous)


# ONNX Runtime session options, against the defaults of the SDK (1 thread, no spinning, all graph optimisations,
# sequential execution, 2,048-row chunks); "session only" is session.run without protect()'s checks.
OPTIONS = {
    "ORT default threads": {"threads": None},
    "spinning on": {"spinning": True},
    "no graph optimisation": {"graph_optimization": "disable"},
    "basic graph optimisation": {"graph_optimization": "basic"},
    "parallel execution mode": {"execution_mode": "parallel"},
    "no chunking": {"chunk": 1 << 30},
}


@pytest.mark.parametrize("batch", [1, 1024, 65536])
@pytest.mark.parametrize("option", ["SDK defaults", *OPTIONS, "session only"])
def test_onnxruntime_session_options(measure, artifact, embeddings, option, batch):
    if option == "no chunking" and batch <= 2048:
        pytest.skip("chunking only changes batches above 2,048 rows")
    x = embeddings(batch)
    protector = Protector(artifact, backend="onnxruntime", **OPTIONS.get(option, {}))
    if option == "session only":
        session = protector._backend("onnxruntime", "cpu").session
        fn = lambda: session.run([OUTPUT], {INPUT: x})[0]  # noqa: E731
    else:
        fn = lambda: protector.protect(x)  # noqa: E731
    measure(fn, kind="ort-options", backend=f"onnxruntime cpu, {option}", batch=batch, option=option)


def test_recognizer_fr128_one_crop(measure, fr128, aligned_crop):
    crop, source = aligned_crop
    measure(lambda: fr128.embed(crop), kind="recognizer", backend="fr128 (onnxruntime cpu, default threads)", batch=1,
            crop=source)


BASELINES = ["none", "gaussian", "polyprotect", "biohashing", "mlphash", "slerpface", "advface"]


@pytest.mark.parametrize("batch", [1, 64, 1024])
@pytest.mark.parametrize("method", BASELINES)
def test_baseline_protect_gallery(measure, embeddings, method, batch):
    from advface_sdk.evaluation.methods import create_method, list_methods

    if method not in list_methods():
        pytest.skip(f"protection method {method!r} is not registered in this checkout")
    m = create_method(method).fit(embeddings(1024))
    x, users = embeddings(batch), np.arange(batch)  # one enrolled user per embedding
    measure(lambda: m.protect_gallery(x, users), kind="baseline", backend=method, batch=batch, params=m.to_dict())
