"""Execution backends for :class:`~advface_sdk.Protector`, behind one :class:`~facecore.registry.Registry`.

Built-ins: ``torch``, ``onnxruntime`` and ``tensorrt``. Third-party backends register under the
``facepriv.backends`` entry-point group (``advface_sdk.backends`` is still read, deprecated) and are
imported lazily, on first use. A backend is ``factory(artifact, device=..., **options)`` returning an
object with ``run(float32 (N, dim) unit rows) -> (N, dim)``.
"""

from __future__ import annotations

from typing import Callable

from facecore.errors import BackendUnavailableError
from facecore.registry import Registry

ENTRY_POINT_GROUP = "facepriv.backends"
LEGACY_ENTRY_POINT_GROUP = "advface_sdk.backends"

BACKENDS: Registry = Registry("backend", ENTRY_POINT_GROUP, legacy_groups=(LEGACY_ENTRY_POINT_GROUP,),
                              error=BackendUnavailableError)
BACKENDS.register("advface_sdk.backends.torch_backend:TorchBackend", name="torch")
BACKENDS.register("advface_sdk.backends.onnxruntime_backend:OnnxRuntimeBackend", name="onnxruntime")
BACKENDS.register("advface_sdk.backends.tensorrt_backend:TensorRTBackend", name="tensorrt")


def register_backend(name: str, factory: Callable) -> None:
    """Register ``factory(artifact, device=..., **options)`` under ``name`` (replacing any previous one)."""
    BACKENDS.register(factory, name=name, override=True)


def list_backends() -> list[str]:
    return BACKENDS.names()


def resolve_backend(name: str) -> Callable:
    """The factory registered under ``name`` (imported on first use)."""
    return BACKENDS.get(name)


def create_backend(name: str, artifact, device: str = "cpu", **options):
    return BACKENDS.create(name, artifact, device=device, **options)
