"""The recognizer registry: the shared built-ins, the generic ONNX adapter and entry-point adapters.

``create_recognizer("fr128")`` opens a built-in model under ``$FACEPRIV_SHARED/models``;
``create_recognizer("onnx", model_path=..., preprocessing=...)`` or any adapter registered under the
``facepriv.recognizers`` entry-point group (imported lazily, on first use);
``create_recognizer("path/to/model.onnx", channel_order="BGR", mean=127, std=128)``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from ..errors import InvalidInputError, ModelLoadError
from ..paths import shared_path
from ..registry import Registry
from .base import Preprocessing, Recognizer

ENTRY_POINT_GROUP = "facepriv.recognizers"
LEGACY_ENTRY_POINT_GROUP = "advface_sdk.recognizers"

# Built-in recognizers: the two pretrained models of the shared folder, with their explicit preprocessing.
BUILTIN = {
    "fr512": ("models/fr512_faceplugin/fr_feature.onnx", Preprocessing("BGR", 127.0, 128.0)),
    "fr128": ("models/fr128_mobilefacenet/mobilefacenet.onnx", Preprocessing("RGB", 127.5, 128.0)),
}

RECOGNIZERS: Registry[Recognizer] = Registry("recognizer", ENTRY_POINT_GROUP, legacy_groups=(LEGACY_ENTRY_POINT_GROUP,))


def _builtin(name: str, **kwargs) -> Recognizer:
    from .onnx_recognizer import OnnxRecognizer

    rel, pre = BUILTIN[name]
    return OnnxRecognizer(shared_path(rel), pre, name=kwargs.pop("name", name), **kwargs)


for _name in BUILTIN:
    RECOGNIZERS.register(partial(_builtin, _name), name=_name)
RECOGNIZERS.register("facecore.recognizers.onnx_recognizer:OnnxRecognizer", name="onnx")


def register_recognizer(obj=None, *, name: str | None = None, override: bool = False):
    """Register a recognizer class or factory (decorator or call); see :meth:`Registry.register`."""
    return RECOGNIZERS.register(obj, name=name, override=override)


def list_recognizers() -> list[str]:
    """Names accepted by :func:`create_recognizer` (built-ins, registered and entry-point adapters)."""
    return RECOGNIZERS.names()


def create_recognizer(spec: str, **kwargs) -> Recognizer:
    """Build a recognizer from a registered name (built-in or adapter) or an ``.onnx`` path."""
    name = str(spec)
    if name.endswith(".onnx") and name not in RECOGNIZERS:
        from .onnx_recognizer import OnnxRecognizer

        pre_keys = {"channel_order", "mean", "std", "input_size"}
        pre = Preprocessing(**{k: kwargs.pop(k) for k in list(kwargs) if k in pre_keys})
        try:
            return OnnxRecognizer(Path(name), kwargs.pop("preprocessing", pre), **kwargs)
        except TypeError as exc:
            raise InvalidInputError(f"bad parameters for ONNX recognizer {name}: {exc}") from exc
    if name not in RECOGNIZERS:
        raise InvalidInputError(f"unknown recognizer {name!r}; available: {', '.join(list_recognizers())} "
                                "or a path to an .onnx file")
    recognizer = RECOGNIZERS.create(name, **kwargs)
    if not isinstance(recognizer, Recognizer):
        raise ModelLoadError(f"recognizer {name!r} built a {type(recognizer).__name__}, not a Recognizer "
                             "(embed, dim, fingerprint, preprocessing): the adapter or plug-in is broken")
    return recognizer
