"""Name -> class registry of protection methods."""

from __future__ import annotations

from facecore.errors import InvalidInputError

from .base import ProtectionMethod

_METHODS: dict[str, type[ProtectionMethod]] = {}


def register_method(cls: type[ProtectionMethod]) -> type[ProtectionMethod]:
    """Class decorator: make ``cls`` available to :func:`create_method` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, ProtectionMethod)) or not getattr(cls, "name", None):
        raise InvalidInputError(f"{cls!r} is not a ProtectionMethod subclass with a name")
    if _METHODS.get(cls.name, cls) is not cls:
        raise InvalidInputError(f"a protection method named {cls.name!r} is already registered ({_METHODS[cls.name]!r})")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Names accepted by :func:`create_method`."""
    return sorted(_METHODS)


def create_method(name: str, **kwargs) -> ProtectionMethod:
    """Build a method by name, e.g. ``create_method("biohashing", seed=3)``."""
    try:
        cls = _METHODS[name]
    except KeyError:
        raise InvalidInputError(f"unknown protection method {name!r}; available: {', '.join(list_methods())}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:  # unknown or missing keyword
        raise InvalidInputError(f"bad parameters for protection method {name!r}: {exc}") from None
