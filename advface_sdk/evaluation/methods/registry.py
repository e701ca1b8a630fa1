"""Name -> class registry of protection methods (entry-point group ``facepriv.protection_methods``)."""

from __future__ import annotations

from facecore.registry import Registry

from .base import ProtectionMethod

ENTRY_POINT_GROUP = "facepriv.protection_methods"

METHODS: Registry[ProtectionMethod] = Registry("protection method", ENTRY_POINT_GROUP, base=ProtectionMethod)


def register_method(cls: type[ProtectionMethod]) -> type[ProtectionMethod]:
    """Class decorator: make ``cls`` available to :func:`create_method` under ``cls.name``."""
    return METHODS.register(cls)


def list_methods() -> list[str]:
    """Names accepted by :func:`create_method`."""
    return METHODS.names()


def create_method(name: str, **kwargs) -> ProtectionMethod:
    """Build a method by name, e.g. ``create_method("biohashing", seed=3)``."""
    return METHODS.create(name, **kwargs)
