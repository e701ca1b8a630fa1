"""``Registry``: one name → factory table per kind of plug-in (timm's shape).

Every pluggable kind (recognizers, protector backends, protection methods, gallery stores) is one
``Registry``. Three sources, in this order: factories registered in this process (the decorator
``@REG.register`` or ``REG.register(obj, name=...)``), built-ins given as ``"module:attr"`` strings
and imported on first use, and entry points of installed packages under the neutral group
``facepriv.<kind>s`` (names under a ``legacy_groups`` group are still read, with a
:class:`DeprecationWarning`, for one release). Unknown names raise the registry's error listing
every valid name; a factory refusing its arguments (``TypeError``) raises :class:`InvalidInputError`.
"""

from __future__ import annotations

import warnings
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Generic, TypeVar

from .errors import FacePrivacyError, InvalidInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → factories (classes or callables) of one kind; ``list``/``get``/``create`` as timm's ``list_models``/``create_model``.

    ``kind`` names the kind in messages, ``group`` is the entry-point group, ``error`` the exception
    raised for an unknown or unimportable name, ``base`` (optional) the class every registered
    class must derive from.
    """

    def __init__(self, kind: str, group: str, *, legacy_groups: tuple[str, ...] = (),
                 error: type[FacePrivacyError] = InvalidInputError, base: type | None = None):
        self.kind, self.group, self.legacy_groups = kind, group, tuple(legacy_groups)
        self.error, self.base = error, base
        self._factories: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}

    # --- registration ---------------------------------------------------------------------------
    def register(self, obj: Any = None, *, name: str | None = None, override: bool = False):
        """Register ``obj`` (a class, a factory, or a ``"module:attr"`` string imported on first use).

        As a decorator: ``@REG.register`` (the name is ``obj.name``) or ``@REG.register(name="x")``.
        A name already taken by another factory is refused unless ``override``.
        """
        def add(target):
            key = name if name is not None else getattr(target, "name", None)
            if not isinstance(key, str) or not key:
                raise InvalidInputError(f"cannot register {target!r} as a {self.kind}: give it a non-empty name")
            if isinstance(target, str):
                if ":" not in target:
                    raise InvalidInputError(f"lazy {self.kind} {key!r} must be given as 'module:attr', got {target!r}")
            elif self.base is not None and not (isinstance(target, type) and issubclass(target, self.base)):
                raise InvalidInputError(f"{target!r} is not a {self.base.__name__} subclass; cannot register it as a {self.kind}")
            elif not callable(target):
                raise InvalidInputError(f"{target!r} is not callable; cannot register it as a {self.kind}")
            current = self._factories.get(key, self._lazy.get(key))
            if current is not None and current is not target and current != target and not override:
                raise InvalidInputError(f"a {self.kind} named {key!r} is already registered ({current!r})")
            self._factories.pop(key, None)
            self._lazy.pop(key, None)
            (self._lazy if isinstance(target, str) else self._factories)[key] = target
            return target

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Forget what this process registered or loaded under ``name`` (an entry point is read again on next use)."""
        self._factories.pop(name, None)
        self._lazy.pop(name, None)

    # --- lookup ---------------------------------------------------------------------------------
    def entry_points(self) -> dict[str, EntryPoint]:
        """Installed plug-ins: ``{name: entry point}``, the neutral group winning over legacy ones."""
        found: dict[str, EntryPoint] = {}
        for group in reversed(self.legacy_groups):
            for ep in entry_points(group=group):
                warnings.warn(f"entry point {ep.name!r} ({ep.value}) is declared under the deprecated group {group!r}; "
                              f"declare it under {self.group!r} (the old group is read for one more release)",
                              DeprecationWarning, stacklevel=3)
                found[ep.name] = ep
        found.update({ep.name: ep for ep in entry_points(group=self.group)})
        return found

    def names(self) -> list[str]:
        """Every valid name, sorted."""
        return sorted(set(self._factories) | set(self._lazy) | set(self.entry_points()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name`` (imported on first use)."""
        if not isinstance(name, str):
            raise self.error(f"{self.kind} must be a name, got {name!r}")
        if name in self._factories:
            return self._factories[name]
        if name in self._lazy:
            load = self._lazy[name]
        else:
            ep = self.entry_points().get(name)
            if ep is None:
                raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or 'none'}")
            load = ep
        where = load if isinstance(load, str) else f"{load.value}, from {load.dist.name if load.dist else 'an entry point'}"
        try:
            factory = import_object(load) if isinstance(load, str) else load.load()
        except Exception as exc:  # a plug-in failing at import (any error) must not take the others down
            raise self.error(f"{self.kind} {name!r} cannot be imported here ({where}): {type(exc).__name__}: {exc}") from exc
        if self.base is not None and not (isinstance(factory, type) and issubclass(factory, self.base)):
            raise self.error(f"{self.kind} {name!r} loads {factory!r}, not a {self.base.__name__} subclass")
        if not callable(factory):
            raise self.error(f"{self.kind} {name!r} ({where}) loads {factory!r}: not a class or a factory")
        self._factories[name] = factory
        self._lazy.pop(name, None)
        return factory

    def create(self, name: str, *args, **kwargs) -> T:
        """``get(name)(*args, **kwargs)``; a ``TypeError`` (unknown or missing keyword) becomes :class:`InvalidInputError`."""
        factory = self.get(name)
        try:
            return factory(*args, **kwargs)
        except TypeError as exc:
            raise InvalidInputError(f"bad parameters for {self.kind} {name!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"


def import_object(target: str) -> Any:
    """The object named by ``"module:attr"``."""
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)
