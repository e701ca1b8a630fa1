"""Vector stores behind one registry: the storage half of :class:`~advface_sdk.gallery.Gallery`.

A store keeps unit-length templates under unique string ids and answers inner-product (cosine)
top-k queries. ``add`` and ``remove`` are all-or-nothing: once they return, the change is durable.
Register more with :func:`register_store` or the ``facepriv.gallery_stores`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from facecore.errors import BackendUnavailableError
from facecore.registry import Registry


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


ENTRY_POINT_GROUP = "facepriv.gallery_stores"

STORES: Registry[VectorStore] = Registry("gallery store", ENTRY_POINT_GROUP, error=BackendUnavailableError, base=VectorStore)
STORES.register("advface_sdk.gallery.faiss_store:FaissStore", name="faiss")
STORES.register("advface_sdk.gallery.milvus_store:MilvusStore", name="milvus")


def register_store(name: str, store: type[VectorStore] | str) -> None:
    """Register a store class (or a ``"module:Class"`` string, imported on first use) under ``name``."""
    STORES.register(store, name=name, override=True)


def list_stores() -> list[str]:
    return STORES.names()


def store_class(name: str) -> type[VectorStore]:
    return STORES.get(name)
