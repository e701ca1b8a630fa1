"""Recognizer registry: built-in specs for the shared models plus adapters from entry points.

``create_recognizer("fr128")`` opens a built-in model under ``$FACEPRIV_SHARED/models``;
``create_recognizer("onnx", model_path=..., preprocessing=...)`` or any adapter registered
under the ``advface_sdk.recognizers`` entry-point group (imported lazily, on first use);
``create_recognizer("path/to/model.onnx", channel_order="BGR", mean=127, std=128)``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from ..errors import InvalidInputError
from ..paths import shared_path
from .base import Preprocessing, Recognizer

ENTRY_POINT_GROUP = "advface_sdk.recognizers"

# Built-in recognizers: the two pretrained models of the shared folder, with their explicit preprocessing.
BUILTIN = {
    "fr512": ("models/fr512_faceplugin/fr_feature.onnx", Preprocessing("BGR", 127.0, 128.0)),
    "fr128": ("models/fr128_mobilefacenet/mobilefacenet.onnx", Preprocessing("RGB", 127.5, 128.0)),
}


def _adapters() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def list_recognizers() -> list[str]:
    """Names accepted by :func:`create_recognizer` (built-ins, then entry-point adapters)."""
    return sorted(BUILTIN) + sorted(_adapters())


def create_recognizer(spec: str, **kwargs) -> Recognizer:
    """Build a recognizer from a built-in name, an adapter name or an ``.onnx`` path."""
    from .onnx_recognizer import OnnxRecognizer

    name = str(spec)
    if name in BUILTIN:
        rel, pre = BUILTIN[name]
        return OnnxRecognizer(shared_path(rel), pre, name=kwargs.pop("name", name), **kwargs)
    if name.endswith(".onnx"):
        pre_keys = {"channel_order", "mean", "std", "input_size"}
        pre = Preprocessing(**{k: kwargs.pop(k) for k in list(kwargs) if k in pre_keys})
        return OnnxRecognizer(Path(name), kwargs.pop("preprocessing", pre), **kwargs)
    adapters = _adapters()
    if name not in adapters:
        raise InvalidInputError(f"unknown recognizer {name!r}; available: {', '.join(list_recognizers())} or a path to an .onnx file")
    return adapters[name].load()(**kwargs)
