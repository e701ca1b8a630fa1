"""Vector stores behind one registry: the storage half of :class:`~advface_sdk.gallery.Gallery`.

A store keeps unit-length templates under unique string ids and answers inner-product (cosine)
top-k queries. ``add`` and ``remove`` are all-or-nothing: once they return, the change is durable.

Partitions: a store created with the option ``partitions=P`` (P > 1; default 1, none) keeps every
template in one of ``P`` partitions, given per row to ``add``, and searches each query only among the
templates of the partition given for that query. A bucketed deployment key (one secret rotation per
bucket, :mod:`advface_sdk.keys`) needs them: scores across buckets mean nothing. A store that cannot
partition refuses ``partitions > 1`` with :class:`InvalidInputError` at ``create``.
Register more with :func:`register_store` or the ``facepriv.gallery_stores`` entry-point group.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from facecore.errors import BackendUnavailableError, InvalidInputError
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
    def add(self, ids: list[str], vectors: np.ndarray, partitions: np.ndarray | None = None) -> None:
        """Store new unique ids (``DuplicateIdError`` if any is present); durable on return. ``partitions``
        (int array, one per row, in ``[0, P)``) is required by a partitioned store and refused by others."""

    @abstractmethod
    def remove(self, ids: list[str]) -> int:
        """Delete the ids that are present; returns how many were."""

    @abstractmethod
    def contains(self, ids: list[str]) -> np.ndarray:
        """Boolean mask: which ids are stored."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, partitions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of shape ``(N, k)``, best first; missing slots are ``""`` / ``-inf``. A partitioned
        store searches query ``i`` among the templates of partition ``partitions[i]`` only (required there)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @classmethod
    def discard(cls, folder: Path, options: dict) -> None:
        """Before ``folder`` is removed from a store whose templates are gone: release what this process still holds
        of it, and refuse (``IncompatibleError``) if the folder keeps data of other stores. Nothing to do by default."""

    def refresh(self) -> None:
        """See changes committed by other processes (no-op where the store is always current)."""

    def search_every_partition(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``queries`` of shape ``(N, P, D)``: query ``[i, p]`` searched in partition ``p``, the ``P`` top-k lists of
        each ``i`` merged; ``(ids, scores)`` of shape ``(N, k)``, best first (a bucketed gallery's 1:N search)."""
        n, parts, dim = check_every_partition(queries, self.partitions)
        ids, scores = self.search(queries.reshape(n * parts, dim), k, np.tile(np.arange(parts), n))
        return merge_top_k(ids.reshape(n, parts * k), scores.reshape(n, parts * k), k)

    @property
    def partitions(self) -> int:
        """How many partitions the store keeps (1: none)."""
        return int(getattr(self, "options", {}).get("partitions") or 1)

    def info(self) -> dict:
        """Store-specific facts (index type, bytes on disk, ...)."""
        return {}

    def close(self) -> None:
        """Release files and connections."""

    def drop(self) -> None:
        """Delete every template this store keeps outside its folder (e.g. a Milvus collection) and close it; the
        caller then removes the folder. The default suits stores that keep everything inside the folder."""
        self.close()


#: most partitions a store keeps (a bucketed key's buckets; each keeps its own rotation in memory)
MAX_PARTITIONS = 256


def check_every_partition(queries: np.ndarray, count: int) -> tuple[int, int, int]:
    """The shape ``(N, P, D)`` of every-partition queries, :class:`InvalidInputError` unless ``P`` is the store's
    partition count ``count``."""
    if queries.ndim != 3 or queries.shape[1] != count:
        raise InvalidInputError(f"every-partition queries must have shape (N, {count}, D) for a store of {count} "
                                f"partitions, got {tuple(queries.shape)}")
    return queries.shape


def check_partitions(value, required_rows: int | None = None, count: int = 1, what: str = "partitions") -> np.ndarray | None:
    """``value`` checked as per-row partition numbers for a store of ``count`` partitions and ``required_rows`` rows:
    an ``int64`` array, or ``None`` for an unpartitioned store. :class:`InvalidInputError` on any mismatch."""
    if count <= 1:
        if value is not None:
            raise InvalidInputError(f"{what} given to a store without partitions (create it with partitions=P)")
        return None
    if value is None:
        raise InvalidInputError(f"this store keeps {count} partitions: pass {what}= (one per row)")
    arr = np.asarray(value)
    if arr.size == 0 and required_rows == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu" or arr.shape != (required_rows,):
        raise InvalidInputError(f"{what} must be {required_rows} integers (one per row), got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= count):
        raise InvalidInputError(f"{what} must lie in [0, {count}), got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)


def merge_top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row's candidates (``ids`` and ``scores`` of shape ``(N, M)``), best first."""
    if scores.shape[1] > k:  # a partial selection of the k best, then only those sorted
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        ids, scores = np.take_along_axis(ids, part, axis=1), np.take_along_axis(scores, part, axis=1)
    best = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(ids, best, axis=1), np.take_along_axis(scores, best, axis=1)


def partition_count(options: dict) -> int:
    """The ``partitions`` store option checked: an integer in ``[1, MAX_PARTITIONS]`` (``None``: 1)."""
    value = options.get("partitions")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_PARTITIONS:
        raise InvalidInputError(f"partitions must be an integer in [1, {MAX_PARTITIONS}], got {value!r}")
    return int(value)


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
