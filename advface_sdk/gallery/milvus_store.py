"""Milvus store through ``pymilvus``: Milvus Lite (a local file inside the gallery folder) by
default, or any Milvus standalone / distributed deployment by URI (``http://host:19530``).

The gallery's identity (protector, recognizer, key, and a random ``instance`` id recorded in ``gallery.json``) is
written into the collection's properties, so a collection is refused by any other gallery even when reached by URI, as
is a collection of another schema, dimension, index or metric. A token for a secured cluster is read from
``$MILVUS_TOKEN`` and never stored. Each ``add`` is inserted and flushed before it returns; a process killed inside
``add`` can leave part of that one batch behind (``advface-cli gallery enroll --skip-existing`` resumes). Milvus has
no transactions: readers of a server see an ``add`` arrive one insert request (8,192 rows) at a time. Milvus Lite
serves a file to one process at a time (any number of clients inside it); use a server for many processes.

Milvus Lite's flush swaps in an empty memtable before the frozen rows are written out as a segment,
so a count or search racing a flush can miss the rows being flushed (a count that shrinks and grows
back), whatever the consistency level. The clients of one Lite database in this process therefore
share a readers-writer lock: ``add`` and ``remove`` (insert, delete, flush) hold it exclusively and
reads share it, so readers see whole commits only.

Partitions (option ``partitions=P``, P > 1) are real Milvus partitions ``b000`` … ``b{P-1}`` of the one
collection, created with it; ``open`` refuses a collection whose partitions differ. Each ``add`` group
is inserted into its partition and each query searches only its own partition (``partition_names``),
so results are exact per partition; ids stay unique across the collection (the primary key), and
``remove`` / ``contains`` / ``len`` see every partition. Milvus Lite supports all of this. The per-partition
requests of one search are sent concurrently (up to :data:`MAX_CONCURRENT_REQUESTS` at a time): a server answers a
``Strong`` request only after its next time tick (``proxy.timeTickInterval``, 200 ms by default), so K requests
one after another would wait K ticks.

Option ``consistency`` is the consistency level of searches: ``Strong`` (default: a search sees every commit that
returned before it, from any process) or ``Bounded`` / ``Session`` / ``Eventually``, which answer a server search
without waiting for the tick (milliseconds instead of ~200 ms on small galleries) but may miss templates committed in the
last seconds (``Session``: those of other processes). It can be given per open (``Gallery.open(...,
consistency=)``, ``advface-cli gallery search --consistency``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from facecore.errors import (
    BackendUnavailableError,
    DuplicateIdError,
    IncompatibleError,
    InvalidInputError,
    StoreMissingError,
)

from .stores import VectorStore, check_partitions, partition_count

PROPERTY = "advface.gallery"
LITE_FILE = "milvus.db"
INDEXES = {"flat": "FLAT", "hnsw": "HNSW"}
CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
DEFAULTS = {"uri": None, "collection": "advface_gallery", "index": "flat", "hnsw_m": 32, "ef_construction": 80,
            "ef_search": 128, "partitions": None, "consistency": "Strong", "instance": None}
#: most per-partition search requests in flight at once (a bucketed search sends one per bucket)
MAX_CONCURRENT_REQUESTS = 64
MAX_ID_LENGTH = 512
_REQUEST_ROWS = 8192  # rows per insert / query request (well under the gRPC message limit)
_DEFAULT_PARTITION = "_default"  # every collection has it; an unpartitioned store keeps its rows there
_COLLECTION_NOT_FOUND = 100  # Milvus's error code (server and Lite)
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")  # what a Milvus server accepts
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def _partition_name(p: int) -> str:
    return f"b{p:03d}"


def _id_filter(ids: list[str]) -> str:
    """A filter matching exactly these ids: each one escaped (pymilvus's ``ids=`` pastes them between quotes as is)."""
    return "id in [" + ",".join(f'"{i.translate(_ESCAPES)}"' for i in ids) + "]"


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers (no writer starvation)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = self._writers_waiting = 0
        self._writing = False

    @contextmanager
    def read(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writing and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


_LITE_LOCKS: dict[str, _ReadWriteLock] = {}
_LITE_LOCKS_GUARD = threading.Lock()


def _lite_lock(uri: str) -> _ReadWriteLock | None:
    """The lock shared by every client of the Milvus Lite database ``uri`` in this process (``None``: a server)."""
    if not uri.endswith(".db"):  # pymilvus's own test for a Lite file
        return None
    with _LITE_LOCKS_GUARD:
        return _LITE_LOCKS.setdefault(os.path.realpath(uri), _ReadWriteLock())


class _LiteStartFailure(logging.Filter):
    """Keeps the exception of Milvus Lite's logged start-up failure (pymilvus then raises only "Open local milvus
    failed") and drops the record, so a user sees one error naming the cause, not a traceback."""

    def __init__(self):
        super().__init__()
        self.cause: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            self.cause = record.exc_info[1]
            return False
        return True


class _QuietRpcErrors(logging.Filter):
    """Drops pymilvus's logged RPC errors (a full traceback at ERROR) in threads inside a store call: the store raises
    those errors itself, typed where it can, so a caller who handles them sees no stray traceback. Calls of other
    pymilvus users in the process still log."""

    def __init__(self):
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(self._local, "depth", 0) and record.funcName == "_log_rpc_error")

    @contextmanager
    def active(self):
        self._local.depth = getattr(self._local, "depth", 0) + 1
        try:
            yield
        finally:
            self._local.depth -= 1


_QUIET = _QuietRpcErrors()
logging.getLogger("pymilvus.decorators").addFilter(_QUIET)


def _client(uri: str):
    try:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException
    except ImportError as exc:
        raise BackendUnavailableError("the milvus gallery store needs pymilvus (and milvus-lite for local files): "
                                      "pip install 'face-privacy-sdk[milvus]'") from exc
    lite_log, failure = logging.getLogger("milvus_lite.server_manager"), _LiteStartFailure()
    lite_log.addFilter(failure)
    try:
        return MilvusClient(uri, token=os.environ.get("MILVUS_TOKEN", ""))
    except (MilvusException, OSError, RuntimeError) as exc:
        cause = failure.cause or exc
        hint = ("; Milvus Lite serves a database to one process at a time: close the other process, or use a Milvus "
                "server (uri=http://host:19530)" if type(cause).__name__ == "DataDirLockedError" else "")
        raise BackendUnavailableError(f"cannot connect to Milvus at {uri}: {getattr(cause, 'message', cause)}{hint}") from exc
    finally:
        lite_log.removeFilter(failure)


def _uri(folder: Path, uri: str | None) -> str:
    """The URI of a store: ``uri``, or the Milvus Lite database inside the gallery folder."""
    return uri or str(Path(folder).resolve() / LITE_FILE)


def _release_lite(uri: str) -> None:
    """Stop this process's Milvus Lite server of the database ``uri``: until then it keeps the database's lock and
    state, even after the database's folder was deleted (a new database there would be served unlocked)."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


class MilvusStore(VectorStore):
    """One Milvus collection: ``id`` VARCHAR primary key + ``vector`` FLOAT_VECTOR, inner-product metric."""

    name = "milvus"

    def __init__(self, folder: Path, dim: int, options: dict):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise InvalidInputError(f"unknown milvus store options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.options = {**DEFAULTS, **options}
        if self.options["index"] not in INDEXES:
            raise InvalidInputError(f"milvus index must be one of {tuple(INDEXES)}, got {self.options['index']!r}")
        if self.options["consistency"] not in CONSISTENCY:
            raise InvalidInputError(f"milvus consistency must be one of {CONSISTENCY}, got {self.options['consistency']!r}")
        uri, collection = self.options["uri"], self.options["collection"]
        if uri is not None and not isinstance(uri, str):
            raise InvalidInputError(f"milvus uri must be a string (a .db path or http://host:19530), got {uri!r}")
        if not isinstance(collection, str) or not _COLLECTION_NAME.fullmatch(collection):
            raise InvalidInputError("milvus collection must be a name of letters, digits and underscores (not starting "
                                    f"with a digit, at most 255), got {collection!r}")
        count = partition_count(self.options)
        self.options["partitions"] = count if count > 1 else None
        self.folder, self.dim = Path(folder), int(dim)
        self.uri = _uri(self.folder, uri)
        self.collection = self.options["collection"]
        self.client = _client(self.uri)
        self._lock = _lite_lock(self.uri)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_guard = threading.Lock()

    @contextmanager
    def _typed_errors(self):
        """A collection dropped behind the gallery's back as a :class:`StoreMissingError` (pymilvus: ``MilvusException``)."""
        from pymilvus.exceptions import MilvusException

        try:
            with _QUIET.active():
                yield
        except MilvusException as exc:
            if exc.code != _COLLECTION_NOT_FOUND:
                raise
            raise StoreMissingError(f"Milvus at {self.uri} has no collection {self.collection!r} any more (dropped "
                                    "while the gallery was open?)") from exc

    def _reading(self):
        return self._lock.read() if self._lock is not None else nullcontext()

    def _writing(self):
        return self._lock.write() if self._lock is not None else nullcontext()

    @classmethod
    def create(cls, folder: Path, dim: int, identity: dict, options: dict) -> "MilvusStore":
        from pymilvus import DataType, MilvusClient

        folder.mkdir(parents=True, exist_ok=True)
        store = cls(folder, dim, {**options, "instance": uuid.uuid4().hex})
        c, name = store.client, store.collection
        if c.has_collection(name):
            found = store._identity()
            if (found is not None and {k: v for k, v in found.items() if k != "instance"} != identity) or len(store):
                raise IncompatibleError(f"Milvus collection {name!r} at {store.uri} already holds another gallery; "
                                        "choose another --collection")
            store._check_schema()
        else:
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_LENGTH)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=store.dim)
            params = c.prepare_index_params()
            opts = store.options
            index_params = {"M": opts["hnsw_m"], "efConstruction": opts["ef_construction"]} if opts["index"] == "hnsw" else {}
            params.add_index(field_name="vector", index_type=INDEXES[opts["index"]], metric_type="IP", params=index_params)
            c.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
            for partition in store._partition_names():
                c.create_partition(name, partition)
        store._check_partitions()
        owner = {**identity, "instance": store.options["instance"]}
        c.alter_collection_properties(name, properties={PROPERTY: json.dumps(owner, sort_keys=True)})
        c.load_collection(name)
        return store

    @classmethod
    def open(cls, folder: Path, dim: int, identity: dict, options: dict, rebuild: bool = False) -> "MilvusStore":
        uri = _uri(folder, options.get("uri"))
        if isinstance(uri, str) and uri.endswith(".db") and not os.path.exists(uri):  # else Milvus Lite would make one
            gone = "" if options.get("uri") else f" (the gallery's {LITE_FILE} is gone)"
            raise StoreMissingError(f"no Milvus Lite database at {uri}{gone}")
        store = cls(folder, dim, options)
        try:
            if not store.client.has_collection(store.collection):
                raise StoreMissingError(f"Milvus at {store.uri} has no collection {store.collection!r}")
            found, instance = store._identity() or {}, store.options["instance"]
            if {k: v for k, v in found.items() if k != "instance"} != identity or instance not in (None, found.get("instance")):
                raise IncompatibleError(f"Milvus collection {store.collection!r} at {store.uri} belongs to another gallery "
                                        f"(dim {found.get('dim')}, protector {found.get('protector')}, recognizer "
                                        f"{found.get('recognizer')}, key {found.get('key_id')}, instance "
                                        f"{found.get('instance')}; this gallery's is {instance})")
            store._check_schema()
            store._check_partitions()
            store.client.load_collection(store.collection)
        except BaseException:
            store.close()
            raise
        return store

    def _partition_names(self) -> list[str]:
        """The Milvus partitions this store keeps besides ``_default`` (none when unpartitioned)."""
        return [_partition_name(p) for p in range(self.partitions)] if self.partitions > 1 else []

    def _check_partitions(self) -> None:
        """``IncompatibleError`` unless the collection has exactly this store's partitions."""
        found = set(self.client.list_partitions(self.collection)) - {_DEFAULT_PARTITION}
        want = set(self._partition_names())
        if found != want:
            missing, extra = sorted(want - found), sorted(found - want)
            raise IncompatibleError(
                f"Milvus collection {self.collection!r} at {self.uri} does not keep the partitions of this store of "
                f"{self.partitions} partition(s)" + (f"; missing: {missing[:5]}" if missing else "")
                + (f"; unexpected: {extra[:5]}" if extra else "") + ": they were changed behind the gallery's back "
                "(restore the collection), or it was made with other partitions (create a new gallery / --collection)")

    def _check_schema(self) -> None:
        """``IncompatibleError`` unless the collection has this store's fields, dimension, index and metric."""
        c, name = self.client, self.collection
        indexes = c.list_indexes(name, field_name="vector")
        index = c.describe_index(name, indexes[0]) if indexes else {}
        fields = sorted(c.describe_collection(name)["fields"], key=lambda f: f["name"])
        found = ", ".join(f"{f['name']} {getattr(f['type'], 'name', f['type'])}"
                          f"({f.get('params', {}).get('max_length', f.get('params', {}).get('dim'))})"
                          + (" primary" if f.get("is_primary") else "") for f in fields)
        found += f"; index {index.get('index_type')}/{index.get('metric_type')}"
        want = f"id VARCHAR({MAX_ID_LENGTH}) primary, vector FLOAT_VECTOR({self.dim}); index {INDEXES[self.options['index']]}/IP"
        if found != want:
            raise IncompatibleError(f"Milvus collection {name!r} at {self.uri} has {found}, this gallery needs {want}: "
                                    "a collection made by someone else, or an edited gallery.json; choose another --collection")

    def _identity(self) -> dict | None:
        props = self.client.describe_collection(self.collection).get("properties", {})
        return json.loads(props[PROPERTY]) if PROPERTY in props else None

    def drop(self) -> None:
        """Drop the collection (every template, on a server too) and close. A Milvus Lite database inside the folder
        (which the caller removes) that also keeps other collections is refused first (``IncompatibleError``)."""
        with self._writing():
            others = sorted(set(self.client.list_collections()) - {self.collection})
            lite = self._lock is not None
            inside = lite and Path(os.path.realpath(self.uri)).is_relative_to(os.path.realpath(self.folder))
            if inside and others:
                self.close()
                raise IncompatibleError(f"the Milvus Lite database {self.uri} in {self.folder} also keeps the collections "
                                        f"{others[:5]} of other galleries: delete those first, nothing was deleted")
            self.client.drop_collection(self.collection)
        self.close()
        if lite and not others:
            _release_lite(self.uri)

    @classmethod
    def discard(cls, folder: Path, options: dict) -> None:
        """A Milvus Lite database in ``folder`` that still keeps collections (of other galleries) is refused; else
        this process's Lite server of it is stopped, so a gallery made again at this path is served locked."""
        uri = _uri(folder, options.get("uri"))
        if _lite_lock(uri) is None or not os.path.exists(uri):
            return
        if not Path(os.path.realpath(uri)).is_relative_to(os.path.realpath(folder)):
            return
        client = _client(uri)
        try:
            others = sorted(client.list_collections())
        finally:
            client.close()
        if others:
            raise IncompatibleError(f"the Milvus Lite database {uri} in {folder} keeps the collections {others[:5]} of "
                                    "other galleries: delete those first, nothing was deleted")
        _release_lite(uri)

    def close(self) -> None:
        with self._pool_guard:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        self.client.close()

    def _groups(self, parts: np.ndarray | None, rows: int) -> list[tuple[str | None, np.ndarray]]:
        """``(partition name, row indices)`` per partition present, in partition order (``None``: unpartitioned)."""
        if parts is None:
            return [(None, np.arange(rows))]
        return [(_partition_name(int(p)), np.flatnonzero(parts == p)) for p in np.unique(parts)]

    def add(self, ids: list[str], vectors: np.ndarray, partitions: np.ndarray | None = None) -> None:
        parts = check_partitions(partitions, len(ids), self.partitions)
        with self._writing(), self._typed_errors():
            self._add(ids, vectors, parts)

    def _add(self, ids: list[str], vectors: np.ndarray, parts: np.ndarray | None) -> None:
        present = [i for i, hit in zip(ids, self._contains(ids)) if hit]
        if present:
            raise DuplicateIdError(f"{len(present)} ids are already enrolled (first: {present[:3]}); nothing was added")
        inserted: list[str] = []
        try:
            for partition, rows in self._groups(parts, len(ids)):
                for start in range(0, len(rows), _REQUEST_ROWS):
                    chunk = rows[start:start + _REQUEST_ROWS]
                    batch = [{"id": ids[r], "vector": vectors[r]} for r in chunk]
                    self.client.insert(self.collection, batch, partition_name=partition)
                    inserted.extend(ids[r] for r in chunk)
        except Exception:
            for start in range(0, len(inserted), _REQUEST_ROWS):  # all or nothing: take back the requests that went in
                self.client.delete(self.collection, filter=_id_filter(inserted[start:start + _REQUEST_ROWS]))
            raise
        self.client.flush(self.collection)

    def remove(self, ids: list[str]) -> int:
        with self._writing(), self._typed_errors():
            present = [i for i, hit in zip(ids, self._contains(ids)) if hit]
            for start in range(0, len(present), _REQUEST_ROWS):
                self.client.delete(self.collection, filter=_id_filter(present[start:start + _REQUEST_ROWS]))
            self.client.flush(self.collection)
        return len(present)

    def contains(self, ids: list[str]) -> np.ndarray:
        with self._reading(), self._typed_errors():
            return self._contains(ids)

    def _contains(self, ids: list[str]) -> np.ndarray:
        found: set[str] = set()
        for start in range(0, len(ids), _REQUEST_ROWS):
            found.update(r["id"] for r in self.client.query(self.collection, filter=_id_filter(ids[start:start + _REQUEST_ROWS]),
                                                             output_fields=["id"]))
        return np.fromiter((i in found for i in ids), bool, len(ids))

    def __len__(self) -> int:
        with self._reading(), self._typed_errors():
            return int(self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"])

    def search(self, queries: np.ndarray, k: int, partitions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        parts = check_partitions(partitions, len(queries), self.partitions)
        params = {"metric_type": "IP", "params": {"ef": max(int(self.options["ef_search"]), k)}
                  if self.options["index"] == "hnsw" else {}}
        ids = np.full((len(queries), k), "", dtype=object)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        groups = self._groups(parts, len(queries))

        def one(group):
            partition, rows = group
            with _QUIET.active():  # pool threads too
                return rows, self.client.search(self.collection, data=queries[rows], limit=k, search_params=params,
                                                output_fields=[], consistency_level=self.options["consistency"],
                                                partition_names=None if partition is None else [partition])

        with self._reading(), self._typed_errors():
            if len(groups) == 1:
                answers = [one(groups[0])]
            else:
                with self._pool_guard:
                    if self._pool is None:
                        self._pool = ThreadPoolExecutor(min(MAX_CONCURRENT_REQUESTS, self.partitions), "milvus-search")
                answers = list(self._pool.map(one, groups))
        for rows, hits in answers:
            for row, found in zip(rows, hits):
                for col, hit in enumerate(found):
                    ids[row, col], scores[row, col] = hit["id"], hit["distance"]
        return ids.astype(str), scores

    def info(self) -> dict:
        out = {"index": self.options["index"], "collection": self.collection,
               "uri": self.uri if self.options["uri"] is None else self.options["uri"].split("@")[-1],
               "partitions": self.partitions}
        lite = Path(self.uri)
        if self.options["uri"] is None and lite.exists():
            files = [lite] if lite.is_file() else [p for p in lite.rglob("*") if p.is_file()]
            out["bytes_on_disk"] = int(sum(p.stat().st_size for p in files))
        if self.options["index"] == "hnsw":
            out.update({k: self.options[k] for k in ("hnsw_m", "ef_construction", "ef_search")})
        return out
