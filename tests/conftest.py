"""Shared fixtures: real data and models come from $FACEPRIV_SHARED; tests needing them skip without it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SKIP_REASON = "needs the shared face data: set FACEPRIV_SHARED to the folder with data/ and models/ (see README)"
#: a Milvus server for the store tests that also run against one (they skip with MILVUS_SKIP_REASON without it)
MILVUS_URI = os.environ.get("FACEPRIV_MILVUS_URI")
MILVUS_SKIP_REASON = ("no Milvus server: set FACEPRIV_MILVUS_URI (e.g. http://127.0.0.1:19530; `pip install milvus && "
                      "milvus-server` runs one locally)")
# every collection the tests make on the server starts with this (inherited by subprocesses); dropped at the end
_COLLECTION_PREFIX = os.environ.setdefault("FACEPRIV_TEST_COLLECTIONS", f"test_{uuid.uuid4().hex[:12]}")


def tiny_vigface_pipeline():
    """A randomly initialised VIGFace pipeline of 16x16 faces in an 8-d space (seconds per shard on one core)."""
    import numpy as np
    import torch
    from diffusers import DDIMScheduler

    from vigface_sdk.models.autoencoder import FaceAutoencoder
    from vigface_sdk.models.denoiser import PrototypeDenoiser
    from vigface_sdk.models.virtual import VirtualPrototypeSampler
    from vigface_sdk.pipelines.pipeline import VIGFacePipeline

    torch.manual_seed(0)
    ae = FaceAutoencoder(image_size=16, latent_channels=2, block_out_channels=(8, 16), cond_dim=8, cond_embed_dim=16,
                         norm_groups=4, condition={"fingerprint": "bb"})
    den = PrototypeDenoiser(sample_size=8, latent_channels=2, cond_dim=8, block_out_channels=(16, 32), layers_per_block=1,
                            attention_head_dim=8, norm_num_groups=8)
    with torch.no_grad():
        for p in [*ae.parameters(), *den.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    sampler = VirtualPrototypeSampler.fit(np.random.default_rng(0).standard_normal((30, 8)))
    return VIGFacePipeline(ae, den, DDIMScheduler(), sampler)


#: synthesis settings fast enough for tests on the tiny pipeline
FAST_SYNTHESIS = dict(num_inference_steps=3, shard_size=2, fmt="folders", progress=False)


@pytest.fixture(scope="module")
def tiny_pipe():
    """:func:`tiny_vigface_pipeline`, built once per test module."""
    return tiny_vigface_pipeline()


def sigterm_once_writing(cmd: list[str], folder: Path, temp_glob: str, env: dict | None = None) -> tuple[int, str]:
    """Run ``cmd``, send it SIGTERM as soon as a temp file matching ``temp_glob`` appears in ``folder`` (it must
    still be running then), and return its exit code and stderr."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not list(folder.glob(temp_glob)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "finished before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def server_collection() -> str:
    """A fresh collection name on the Milvus server, dropped when the test session ends."""
    return f"{_COLLECTION_PREFIX}_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def _drop_server_collections():
    yield
    if MILVUS_URI:
        from pymilvus import MilvusClient

        client = MilvusClient(MILVUS_URI, token=os.environ.get("MILVUS_TOKEN", ""))
        for name in client.list_collections():
            if name.startswith(_COLLECTION_PREFIX):
                client.drop_collection(name)
        client.close()


@pytest.fixture(scope="session")
def shared() -> Path:
    value = os.environ.get("FACEPRIV_SHARED")
    if not value or not Path(value, "data", "lfw", "aligned112").is_dir():
        pytest.skip(SKIP_REASON)
    return Path(value)


@pytest.fixture(scope="session")
def lfw_root(shared) -> Path:
    return shared / "data" / "lfw" / "aligned112"


@pytest.fixture(scope="session")
def fr128(shared):
    from facecore.recognizers import create_recognizer

    return create_recognizer("fr128")


@pytest.fixture(scope="session")
def fr512(shared):
    from facecore.recognizers import create_recognizer

    return create_recognizer("fr512")


@pytest.fixture(scope="session")
def plain():
    """The shipped fr128 protector, unkeyed (ONNX Runtime)."""
    from advface_sdk import Protector

    return Protector("fr128", backend="onnxruntime")


@pytest.fixture(scope="session")
def keyfile(tmp_path_factory, plain):
    """A deployment key file for the shipped fr128 protector."""
    from advface_sdk import DeploymentKey

    path = tmp_path_factory.mktemp("keys") / "deploy.key"
    DeploymentKey.generate(plain.artifact.protector_id).save(path)
    return path
