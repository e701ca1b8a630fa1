"""The embedded default store: FAISS in one folder, crash-safe by an append-only commit log.

Layout: ``state.json`` (the commit log head, replaced atomically) lists immutable, checksummed
segment files (``seg-N.npz``: ids + templates; ``del-N.npy``: removed row keys) and the latest
index checkpoint (``index-N.faiss``). A commit writes and fsyncs its segment, then replaces
``state.json``: a crash before the rename leaves the previous state, after it the new one.
The FAISS index is derived data: rows committed after the checkpoint are re-added on open, and
a corrupt checkpoint is rebuilt from the segments by ``Gallery.open(..., rebuild_index=True)``.
The ``ivf`` index (IVF-Flat) is trained once, by the writer of the first non-empty commit, on the templates
of that commit (``nlist`` = 4·sqrt(N) unless given): the trained, empty index is an immutable, checksummed
``ivf-N.faiss`` named in ``state.json``, so every process adds the same rows to the same centroids.
``rebuild`` retrains on all stored templates (do so once the gallery has grown well past the size it
was trained on; ``info()`` says when).
Writers serialise on an ``flock``; readers never lock and see whole commits only.

Partitions (``partitions=P``, a bucketed key's buckets): each segment also stores the partition of each
row, and the index is an IVF-Flat whose ``P`` inverted lists *are* the partitions: rows are added to
their partition's list by FAISS's preassigned add (no coarse quantizer involved), and each query is
scored against its partition's list only, so the search is exact within the partition and a query costs
one partition's rows. A probe searched in every partition (``search_every_partition``, a bucketed
gallery's 1:N search) is one batched product over a zero-padded copy of the partitions for a few probes
on a store of up to ~130 k templates (the copy is kept in memory; batch-1 latency), else one product
per partition. Approximate indexes (``hnsw``, ``ivf``) inside partitions are not offered here;
the Milvus store keeps HNSW per partition.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
from pathlib import Path

import faiss
import numpy as np

from facecore.artifacts import sha256_file
from facecore.errors import ArtifactError, DuplicateIdError, IncompatibleError, InvalidInputError, StoreMissingError

from .stores import VectorStore, check_every_partition, check_partitions, merge_top_k, partition_count

STATE = "state.json"
INDEXES = ("flat", "hnsw", "ivf")
DEFAULTS = {"index": "flat", "hnsw_m": 32, "ef_construction": 80, "ef_search": 128, "nlist": None, "nprobe": 32,
            "partitions": None}
#: IVF training: k-means iterations and the most points per centroid it samples (FAISS subsamples deterministically)
IVF_NITER, IVF_POINTS_PER_LIST = 10, 64
#: ``info()`` advises ``rebuild`` once an IVF gallery holds this many times the rows it was trained on
RETRAIN_GROWTH = 4
#: most scores (queries × padded rows) of one stacked every-partition product (512 KB of float32, cache-sized)
STACKED_SCORES = 1 << 17


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, write) -> str:
    """Write ``path`` through ``write(fh)`` into a temporary file, fsync, rename; returns its SHA-256."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _entry_problem(entry, what: str, pattern: str) -> str | None:
    """What is wrong with a file entry of ``state.json``: it must name one of the store's own files (``pattern``)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return f"{what} must be an object with a sha256, got {entry!r}"
    if not isinstance(entry.get("file"), str) or not re.fullmatch(pattern, entry["file"]):
        return f"{what} names {entry.get('file')!r}, not a file of this gallery's folder"
    return None


def _state_problem(state) -> str | None:
    """What is wrong with a parsed ``state.json`` (``None``: nothing); nothing outside the folder may be named."""
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    for name in ("generation", "rows"):
        if isinstance(state.get(name), bool) or not isinstance(state.get(name), int) or state[name] < 0:
            return f"{name} must be a non-negative integer, got {state.get(name)!r}"
    if not isinstance(state.get("segments"), list):
        return f"segments must be a list, got {state.get('segments')!r}"
    for seg in state["segments"]:
        problem = _entry_problem(seg, "a segment", r"(seg-\d{8,}\.npz|del-\d{8,}\.npy)")
        if problem or seg.get("kind") != ("add" if seg["file"].startswith("seg-") else "remove"):
            return problem or f"segment {seg['file']} has kind {seg.get('kind')!r}"
    for name, pattern in (("index", r"index-\d{8,}\.faiss"), ("trained", r"ivf-\d{8,}\.faiss")):
        if state.get(name) is not None and (problem := _entry_problem(state[name], name, pattern)):
            return problem
    index = state.get("index")
    if index is not None and (isinstance(index.get("rows"), bool) or not isinstance(index.get("rows"), int)):
        return f"the index checkpoint must record its rows, got {index.get('rows')!r}"
    return None


def ivf_nlist(rows: int, nlist: int | None = None) -> int:
    """Inverted lists for ``rows`` templates: ``nlist`` if given, else 4·sqrt(rows); never more than rows."""
    return max(1, min(int(rows), int(nlist) if nlist else round(4 * math.sqrt(rows))))


def _top_k(scores: np.ndarray, row_keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``scores`` (columns named by ``row_keys``), best first: ``(scores, keys)`` of
    shape ``(n, k)``, ``-inf`` / ``-1`` where fewer than ``k`` columns score above ``-inf``."""
    n, width = scores.shape
    out, keys = np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    take = min(k, width)
    if not take:
        return out, keys
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take] if width > take else np.tile(np.arange(width), (n, 1))
    best = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    out[:, :take] = np.take_along_axis(best, order, axis=1)
    keys[:, :take] = row_keys[np.take_along_axis(top, order, axis=1)]
    keys[out == -np.inf] = -1
    return out, keys


class FaissStore(VectorStore):
    """FAISS ``flat`` (exact), ``hnsw`` or ``ivf`` (approximate) inner-product index over a segment log."""

    name = "faiss"

    def __init__(self, folder: Path, dim: int, options: dict):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise InvalidInputError(f"unknown faiss store options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.options = {**DEFAULTS, **options}
        if self.options["index"] not in INDEXES:
            raise InvalidInputError(f"faiss index must be one of {INDEXES}, got {self.options['index']!r}")
        for name in ("nlist", "nprobe"):
            value = self.options[name]
            if not (value is None and name == "nlist") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"faiss {name} must be a positive integer{' or None (auto)' if name == 'nlist' else ''}, "
                                        f"got {value!r}")
        self._parts = partition_count(self.options)
        if self._parts > 1 and self.options["index"] != "flat":
            raise InvalidInputError(f"a partitioned FAISS gallery searches each partition exactly (index='flat'), not "
                                    f"{self.options['index']!r}; for approximate search per partition use store='milvus'")
        self.folder, self.dim = Path(folder), int(dim)
        self._reset()

    def _reset(self) -> None:
        self._applied: list[str] = []  # segment files applied, in log order
        self._rows = 0  # row keys handed out (removed rows keep theirs)
        self._id_table = np.asarray([""])  # key -> id; the last entry answers FAISS's -1
        self._keys: dict[str, int] = {}  # live id -> key
        self._removed: list[int] = []
        self._index = None
        self._stamp = None
        self._params = None
        self._selector = None
        self._trained = None  # file name of the trained IVF index the in-memory index grew from
        self._stack = None  # (stamp, list sizes, (vectors (P, S, D), row keys (P * S,)) or None): search_every_partition

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, dim: int, identity: dict, options: dict) -> "FaissStore":
        store = cls(folder, dim, options)
        store.folder.mkdir(parents=True, exist_ok=True)
        with store._lock():
            store._write_state({"generation": 0, "rows": 0, "segments": [], "index": None, "partitions": store._parts})
        store._load_state()
        return store

    @classmethod
    def open(cls, folder: Path, dim: int, identity: dict, options: dict, rebuild: bool = False) -> "FaissStore":
        store = cls(folder, dim, options)
        if not (store.folder / STATE).is_file():
            raise ArtifactError(f"{store.folder} has no {STATE}: not a FAISS gallery, or damaged")
        kept = int(store._read_state()[0].get("partitions") or 1)
        if kept != store._parts:
            raise IncompatibleError(f"{store.folder} keeps {kept} partition(s), not {store._parts}: open it with "
                                    f"partitions={kept if kept > 1 else None}")
        if rebuild:
            store.rebuild()
        else:
            store._load_state()
        return store

    def close(self) -> None:
        self.checkpoint()
        self._index = None

    def drop(self) -> None:
        """Close without a checkpoint: every file of this store lies in the folder the caller removes next."""
        self._index = None

    def _make_index(self, trained: dict | None = None):
        if self._parts > 1:  # one inverted list per partition, filled and searched by preassignment only
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, self._parts, faiss.METRIC_INNER_PRODUCT)
            index.quantizer.add(np.zeros((self._parts, self.dim), np.float32))
            index.is_trained = True
            return index
        if self.options["index"] == "ivf":  # untrained (empty gallery): an empty exact index stands in
            return self._read_index(trained, "trained IVF index") if trained else faiss.IndexFlatIP(self.dim)
        if self.options["index"] == "flat":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, int(self.options["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.options["ef_construction"])
        return index

    @contextlib.contextmanager
    def _lock(self):
        with open(self.folder / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ---- reading the log -------------------------------------------------------------------

    def _read_state(self) -> tuple[dict, tuple]:
        path = self.folder / STATE
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                state = json.loads(fh.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path} is corrupt: {exc}") from exc
        problem = _state_problem(state)
        if problem:
            raise ArtifactError(f"{path} is corrupt or was edited: {problem}")
        return state, (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load_state(self, use_checkpoint: bool = True) -> None:
        """Apply the commits in ``state.json`` that this process has not seen yet."""
        path = self.folder / STATE
        st = os.stat(path)
        if self._stamp == (st.st_ino, st.st_mtime_ns, st.st_size):
            return
        for attempt in range(5):  # a concurrent checkpoint may delete the index file we were told about
            state, stamp = self._read_state()
            files = [s["file"] for s in state["segments"]]
            trained = state.get("trained")
            if files[:len(self._applied)] != self._applied or (trained and trained["file"]) != self._trained:
                self._reset()
            try:
                if self._index is None:
                    self._index = self._open_checkpoint(state.get("index"), trained) if use_checkpoint else None
                    self._index = self._index or self._make_index(trained)
                    self._trained = trained and trained["file"]
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
        for seg in state["segments"][len(self._applied):]:
            self._apply(seg)
        self._stamp = stamp

    def _read_index(self, entry: dict, what: str):
        path = self.folder / entry["file"]
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: {what} file is corrupt (checksum mismatch); the templates are intact: rebuild "
                                f"the index with `advface-cli gallery rebuild {self.folder}`")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ArtifactError(f"{path}: unreadable {what} file ({exc})") from exc
        if index.d != self.dim:
            raise ArtifactError(f"{path}: {what} of dim {index.d}, the gallery holds {self.dim}-d templates")
        return index

    def _open_checkpoint(self, entry: dict | None, trained: dict | None = None):
        if not entry or entry.get("trained") != (trained and trained["file"]):  # a checkpoint of an older training
            return None
        path = self.folder / entry["file"]
        index = self._read_index(entry, "index")
        if index.ntotal != entry["rows"] or index.d != self.dim:
            raise ArtifactError(f"{path}: index holds {index.ntotal} rows of dim {index.d}, the log says {entry['rows']} of {self.dim}")
        return index

    def _segment(self, seg: dict) -> Path:
        path = self.folder / seg["file"]
        if not path.is_file():
            raise StoreMissingError(f"{path} is missing: the gallery lost committed templates")
        if sha256_file(path) != seg["sha256"]:
            raise StoreMissingError(f"{path} is corrupt (checksum mismatch): the gallery lost committed templates")
        return path

    def _apply(self, seg: dict) -> None:
        path = self._segment(seg)
        if seg["kind"] == "add":
            with np.load(path, allow_pickle=False) as z:
                ids = z["ids"]
                first = self._rows
                if first + len(ids) > self._index.ntotal:  # not yet in the checkpoint
                    skip = self._index.ntotal - first
                    vectors = np.ascontiguousarray(z["vectors"][skip:], dtype=np.float32)
                    if self._parts > 1:
                        parts = np.ascontiguousarray(z["partitions"][skip:], dtype=np.int64)
                        self._index.add_core(len(vectors), faiss.swig_ptr(vectors), None, faiss.swig_ptr(parts))
                    else:
                        self._index.add(vectors)
            self._keys.update(zip(ids.tolist(), range(first, first + len(ids))))
            self._id_table = np.concatenate([self._id_table[:-1], ids, [""]])
            self._rows += len(ids)
        else:
            keys = np.load(path, allow_pickle=False)
            for key in keys.tolist():
                self._keys.pop(str(self._id_table[key]), None)
            self._removed.extend(keys.tolist())
            self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(self._removed, np.int64)))
        self._applied.append(seg["file"])
        self._params = None

    def refresh(self) -> None:
        self._load_state()

    # ---- writing the log -------------------------------------------------------------------

    def _write_state(self, state: dict) -> None:
        _write_durable(self.folder / STATE, lambda fh: fh.write(json.dumps(state, indent=1).encode()))

    def _commit(self, kind: str, suffix: str, write, rows: int = 0, state: dict | None = None) -> None:
        """Append one segment (written by ``write(fh)``) to the log; caller holds the lock."""
        state = state or self._read_state()[0]
        generation = state["generation"] + 1
        name = f"{'seg' if kind == 'add' else 'del'}-{generation:08d}{suffix}"
        digest = _write_durable(self.folder / name, write)
        state = {**state, "generation": generation, "rows": state["rows"] + rows,
                 "segments": state["segments"] + [{"file": name, "kind": kind, "sha256": digest}]}
        self._write_state(state)
        self._load_state()

    def add(self, ids: list[str], vectors: np.ndarray, partitions: np.ndarray | None = None) -> None:
        parts = check_partitions(partitions, len(ids), self._parts)
        arrays = {} if parts is None else {"partitions": parts}
        with self._lock():
            self._load_state()
            present = [i for i in ids if i in self._keys]
            if present:
                raise DuplicateIdError(f"{len(present)} ids are already enrolled (first: {present[:3]}); nothing was added")
            state, _ = self._read_state()
            if self.options["index"] == "ivf" and not state.get("trained") and len(ids):
                state = self._train(state, vectors)  # written before the commit that names it
            self._commit("add", ".npz", lambda fh: np.savez(fh, ids=np.asarray(ids, dtype=str),
                                                             vectors=np.ascontiguousarray(vectors, np.float32), **arrays),
                         len(ids), state)

    def remove(self, ids: list[str]) -> int:
        with self._lock():
            self._load_state()
            keys = np.asarray(sorted({self._keys[i] for i in ids if i in self._keys}), np.int64)
            if len(keys):
                self._commit("remove", ".npy", lambda fh: np.save(fh, keys))
        return int(len(keys))

    def checkpoint(self) -> None:
        """Write the in-memory index as the new checkpoint if it covers more rows than the last one."""
        if self._index is None:
            return
        with self._lock():
            self._load_state()
            state, _ = self._read_state()
            old = state.get("index")
            if self._index.ntotal != state["rows"] or (old and old["rows"] == state["rows"]):
                return
            self._write_checkpoint(state)

    def _write_checkpoint(self, state: dict) -> None:
        old = state.get("index")
        name = f"index-{state['generation']:08d}.faiss"
        buf = faiss.serialize_index(self._index)
        digest = _write_durable(self.folder / name, lambda fh: fh.write(buf.tobytes()))
        self._write_state({**state, "index": {"file": name, "rows": int(self._index.ntotal), "sha256": digest,
                                              "trained": self._trained}})
        if old and old["file"] != name:
            (self.folder / old["file"]).unlink(missing_ok=True)
        self._sweep(state, name)

    def _sweep(self, state: dict, index_file: str) -> None:
        """Delete files no commit refers to (left by a crash or an older training); caller holds the lock."""
        keep = {s["file"] for s in state["segments"]} | {index_file, STATE, ".lock"}
        if state.get("trained"):
            keep.add(state["trained"]["file"])
        for path in self.folder.iterdir():
            if path.name not in keep and path.name.lstrip(".").startswith(("seg-", "del-", "index-", "ivf-", STATE)):
                path.unlink(missing_ok=True)

    def _train(self, state: dict, vectors: np.ndarray) -> dict:
        """Train an empty IVF-Flat index on ``vectors``, write it durably; returns ``state`` naming it. Caller holds the lock."""
        nlist = ivf_nlist(len(vectors), self.options["nlist"])
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.max_points_per_centroid, index.cp.spherical = IVF_NITER, IVF_POINTS_PER_LIST, True
        index.cp.min_points_per_centroid = 1  # small galleries: train anyway (FAISS only warns)
        index.verbose = False
        index.train(np.ascontiguousarray(vectors, np.float32))
        training = int((state.get("trained") or {}).get("training", 0)) + 1  # a new name each time: files are immutable
        name = f"ivf-{training:08d}.faiss"
        buf = faiss.serialize_index(index)
        digest = _write_durable(self.folder / name, lambda fh: fh.write(buf.tobytes()))
        return {**state, "trained": {"file": name, "sha256": digest, "rows": int(len(vectors)), "nlist": int(nlist),
                                     "training": training}}

    def rebuild(self) -> None:
        """Rebuild the index from the segments (ignoring the checkpoint) and write a fresh checkpoint; an IVF index
        is first retrained on every stored template (``nlist`` from their number unless given)."""
        with self._lock():
            state, _ = self._read_state()
            if self.options["index"] == "ivf" and state["rows"]:
                vectors, removed = self._stored_vectors(state)
                live = np.ones(len(vectors), bool)
                live[removed] = False
                state = self._train({**state, "index": None}, vectors[live] if live.any() else vectors)
                self._write_state(state)
            self._reset()
            self._load_state(use_checkpoint=False)
            state, _ = self._read_state()
            self._write_checkpoint(state)

    def _stored_vectors(self, state: dict) -> tuple[np.ndarray, np.ndarray]:
        """Every template ever added, in row-key order, and the row keys removed since (segments checked)."""
        parts, removed = [], []
        for seg in state["segments"]:
            if seg["kind"] == "add":
                with np.load(self._segment(seg), allow_pickle=False) as z:
                    parts.append(np.asarray(z["vectors"], np.float32))
            else:
                removed.append(np.load(self._segment(seg), allow_pickle=False).astype(np.int64))
        return (np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32),
                np.concatenate(removed) if removed else np.zeros(0, np.int64))

    # ---- queries ---------------------------------------------------------------------------

    def contains(self, ids: list[str]) -> np.ndarray:
        self._load_state()
        return np.fromiter((i in self._keys for i in ids), bool, len(ids))

    def __len__(self) -> int:
        return len(self._keys)

    def search(self, queries: np.ndarray, k: int, partitions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        scores, keys = self._search_keys(queries, k, check_partitions(partitions, len(queries), self._parts))
        return self._id_table[keys], scores

    def search_every_partition(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As the base method; only the ``N × k`` winners become string ids. Small calls on small stores are one
        batched product over a padded copy of every partition (:meth:`_stacked`), the rest one product per partition."""
        n, parts, _ = check_every_partition(queries, self._parts)
        self._load_state()
        queries = np.ascontiguousarray(queries, np.float32)
        stack = self._stacked(n)
        if stack is None:
            found = [self._partition_top_k(queries[:, p], p, k) for p in range(parts)]
            keys, scores = merge_top_k(np.hstack([f[1] for f in found]), np.hstack([f[0] for f in found]), k)
            return self._id_table[keys], scores
        vectors, row_keys = stack
        width = row_keys.size
        s = np.matmul(vectors, np.ascontiguousarray(queries.transpose(1, 2, 0))).reshape(width, n)  # (P * S, n)
        s[row_keys < 0] = -np.inf
        scores, keys = _top_k(np.ascontiguousarray(s.T), row_keys, k)
        return self._id_table[keys], scores

    def _stacked(self, queries: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The partitions' vectors as one zero-padded ``(P, S, D)`` array and their row keys (``-1``: padding or a
        removed row), for a call of ``queries`` probes whose ``queries × P × S`` scores stay within
        :data:`STACKED_SCORES`; else ``None`` (one product per partition, whose scores stay in cache, is faster).
        Why a copy: FAISS keeps each inverted list in its own buffer, and a product per partition costs ~25 µs of
        call overhead, 1.6 ms per probe with 64 partitions, which one product over the stack avoids (batch 1:
        ~10× faster on 11 k templates). Rebuilt when the store has changed; at most ``STACKED_SCORES × D`` floats."""
        if self._stack is None or self._stack[0] != self._stamp:
            lists = self._index.invlists
            sizes = [lists.list_size(p) for p in range(self._parts)]
            self._stack = (self._stamp, sizes, None)
        stamp, sizes, built = self._stack
        width = max(sizes, default=0)
        if not width or queries * self._parts * width > STACKED_SCORES:
            return None
        if built is None:
            vectors = np.zeros((self._parts, width, self.dim), np.float32)
            keys = np.full((self._parts, width), -1, np.int64)
            for p, size in enumerate(sizes):
                if size:
                    keys[p, :size], vectors[p, :size] = self._partition_rows(p)
            if self._removed:
                keys[np.isin(keys, np.asarray(self._removed, np.int64))] = -1
            built = (vectors, keys.reshape(-1))
            self._stack = (stamp, sizes, built)
        return built

    def _search_keys(self, queries: np.ndarray, k: int, parts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, row keys)`` of the top-k, ``-inf`` / ``-1`` where fewer exist."""
        self._load_state()
        if parts is not None:
            return self._search_partitions(np.ascontiguousarray(queries, np.float32), k, parts)
        if self._params is None:
            ivf = isinstance(self._index, faiss.IndexIVF)
            cls = (faiss.SearchParametersHNSW if self.options["index"] == "hnsw" else
                   faiss.SearchParametersIVF if ivf else faiss.SearchParameters)
            self._params = cls(sel=self._selector) if self._selector is not None else cls()
            if ivf:
                self._params.nprobe = min(int(self.options["nprobe"]), self._index.nlist)
        if self.options["index"] == "hnsw":
            self._params.efSearch = max(int(self.options["ef_search"]), k)
        scores, keys = self._index.search(queries, k, params=self._params)
        scores[keys < 0] = -np.inf
        return scores, keys

    def _search_partitions(self, queries: np.ndarray, k: int, parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each query scored against its own partition (:meth:`_partition_top_k`), queries grouped by partition."""
        scores, keys = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        order = np.argsort(parts, kind="stable")
        bounds = np.searchsorted(parts[order], np.arange(self._parts + 1))
        for p in range(self._parts):
            rows = order[bounds[p]:bounds[p + 1]]
            if len(rows):
                scores[rows], keys[rows] = self._partition_top_k(queries[rows], p, k)
        return scores, keys

    def _partition_rows(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Row keys and vectors of partition ``p``'s inverted list, as views of FAISS's buffers (no copy)."""
        lists = self._index.invlists
        size = lists.list_size(p)
        if not size:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        ids = faiss.rev_swig_ptr(lists.get_ids(p), size)
        return ids, faiss.rev_swig_ptr(lists.get_codes(p), size * self.dim * 4).view(np.float32).reshape(size, self.dim)

    def _partition_top_k(self, queries: np.ndarray, p: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, row keys)`` of the k best live rows of partition ``p`` for each query (``-inf`` / ``-1`` where
        fewer exist): one matrix product over the partition's inverted list, removed rows masked. Why not FAISS's
        ``search_preassigned``: it scans a list vector by vector (2.3× slower here on a 100 k gallery with 64
        partitions) and its Python form takes no selector for the removed rows. The caller has loaded the state."""
        scores, keys = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        ids, vectors = self._partition_rows(p)
        size = len(ids)
        if not size:
            return scores, keys
        dead = np.isin(ids, np.asarray(self._removed, np.int64)) if self._removed else None
        step = max(1, (1 << 24) // size)  # at most 64 MB of scores at once
        for start in range(0, len(queries), step):
            s = queries[start:start + step] @ vectors.T
            if dead is not None:
                s[:, dead] = -np.inf
            scores[start:start + step], keys[start:start + step] = _top_k(s, ids, k)
        return scores, keys

    def info(self) -> dict:
        state, _ = self._read_state()
        files = [self.folder / s["file"] for s in state["segments"]]
        index = state.get("index")
        out = {"index": self.options["index"], "rows_ever_added": int(state["rows"]), "commits": int(state["generation"]),
               "segment_bytes": int(sum(p.stat().st_size for p in files if p.is_file())),
               "index_checkpoint_rows": int(index["rows"]) if index else 0,
               "index_bytes": int((self.folder / index["file"]).stat().st_size) if index else 0,
               "partitions": self._parts}
        if self.options["index"] == "hnsw":
            out.update({k: self.options[k] for k in ("hnsw_m", "ef_construction", "ef_search")})
        if self.options["index"] == "ivf":
            trained = state.get("trained") or {}
            out.update({"nprobe": self.options["nprobe"], "nlist": trained.get("nlist"), "trained_rows": trained.get("rows", 0),
                        "retrain_advised": bool(trained) and state["rows"] > RETRAIN_GROWTH * trained["rows"]})
        return out
