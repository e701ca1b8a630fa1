"""Execution backends for :class:`~advface_sdk.Protector`, behind one registry.

Built-ins: ``torch``, ``onnxruntime`` and ``tensorrt``. Third-party backends register under the
``advface_sdk.backends`` entry-point group and are imported lazily, on first use.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Callable

from facecore.errors import BackendUnavailableError

ENTRY_POINT_GROUP = "advface_sdk.backends"
_BUILTIN = {
    "torch": "advface_sdk.backends.torch_backend:TorchBackend",
    "onnxruntime": "advface_sdk.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "advface_sdk.backends.tensorrt_backend:TensorRTBackend",
}
_REGISTRY: dict[str, Callable] = {}


def register_backend(name: str, factory: Callable) -> None:
    """Register ``factory(artifact, device=..., **options)`` under ``name``."""
    _REGISTRY[name] = factory


def list_backends() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def resolve_backend(name: str) -> Callable:
    """The factory registered under ``name`` (imported on first use)."""
    return _resolve(name)


def _resolve(name: str) -> Callable:
    if not isinstance(name, str):
        raise BackendUnavailableError(f"backend must be a name, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = _BUILTIN.get(name)
    if target is None:
        eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        if name not in eps:
            raise BackendUnavailableError(f"unknown backend {name!r}; available: {', '.join(list_backends())}")
        factory = eps[name].load()
    else:
        module, _, attr = target.partition(":")
        try:
            factory = getattr(import_module(module), attr)
        except ImportError as exc:
            raise BackendUnavailableError(f"backend {name!r} cannot be imported here: {exc}") from exc
    _REGISTRY[name] = factory
    return factory


def create_backend(name: str, artifact, device: str = "cpu", **options):
    factory = _resolve(name)
    try:
        return factory(artifact, device=device, **options)
    except TypeError as exc:
        from facecore.errors import InvalidInputError

        raise InvalidInputError(f"backend {name!r}: bad option ({exc})") from exc
