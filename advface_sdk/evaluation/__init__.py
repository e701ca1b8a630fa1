"""Benchmark harness: template-protection methods (baselines here, AdvFace added alongside)."""

from .methods import KeyedMethod, ProtectionMethod, create_method, list_methods, register_method

__all__ = ["ProtectionMethod", "KeyedMethod", "create_method", "list_methods", "register_method"]
