"""Vector stores behind one registry: the storage half of :class:`~advface_sdk.gallery.Gallery`.

A store keeps unit-length templates under unique string ids and answers inner-product (cosine)
top-k queries. ``add`` and ``remove`` are all-or-nothing: once they return, the change is durable.
Register more with :func:`register_store`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from facecore.errors import BackendUnavailableError


class VectorStore(ABC):
    """Durable id → template storage with top-k inner-product search."""

    name: str = ""

    @classmethod
    @abstractmethod
    def create(cls, folder: Path, dim: int, identity: dict, options: dict) -> "VectorStore":
        """Create an empty store in (or pointed at from) ``folder``; ``identity`` is stored alongside."""

    @classmethod
    @abstractmethod
    def open(cls, folder: Path, dim: int, identity: dict, options: dict, rebuild: bool = False) -> "VectorStore":
        """Open an existing store (``IncompatibleError`` if it holds another identity); ``rebuild``
        recomputes derived index data from the stored templates first, where the store keeps any."""

    @abstractmethod
    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Store new unique ids (``DuplicateIdError`` if any is present); durable on return."""

    @abstractmethod
    def remove(self, ids: list[str]) -> int:
        """Delete the ids that are present; returns how many were."""

    @abstractmethod
    def contains(self, ids: list[str]) -> np.ndarray:
        """Boolean mask: which ids are stored."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of shape ``(N, k)``, best first; missing slots are ``""`` / ``-inf``."""

    @abstractmethod
    def __len__(self) -> int: ...

    def refresh(self) -> None:
        """See changes committed by other processes (no-op where the store is always current)."""

    def info(self) -> dict:
        """Store-specific facts (index type, bytes on disk, ...)."""
        return {}

    def close(self) -> None:
        """Release files and connections."""


_STORES: dict[str, Callable[[], type[VectorStore]]] = {}


def register_store(name: str, loader: Callable[[], type[VectorStore]]) -> None:
    """Register a store class under ``name``; ``loader`` imports it lazily."""
    _STORES[name] = loader


def list_stores() -> list[str]:
    return sorted(_STORES)


def store_class(name: str) -> type[VectorStore]:
    if name not in _STORES:
        raise BackendUnavailableError(f"unknown gallery store {name!r}; available: {list_stores()}")
    return _STORES[name]()


def _faiss() -> type[VectorStore]:
    from .faiss_store import FaissStore

    return FaissStore


def _milvus() -> type[VectorStore]:
    from .milvus_store import MilvusStore

    return MilvusStore


register_store("faiss", _faiss)
register_store("milvus", _milvus)
