"""The embedded default store: FAISS in one folder, crash-safe by an append-only commit log.

Layout: ``state.json`` (the commit log head, replaced atomically) lists immutable, checksummed
segment files (``seg-N.npz``: ids + templates; ``del-N.npy``: removed row keys) and the latest
index checkpoint (``index-N.faiss``). A commit writes and fsyncs its segment, then replaces
``state.json``: a crash before the rename leaves the previous state, after it the new one.
The FAISS index is derived data: rows committed after the checkpoint are re-added on open, and
a corrupt checkpoint is rebuilt from the segments by ``Gallery.open(..., rebuild_index=True)``.
Writers serialise on an ``flock``; readers never lock and see whole commits only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import faiss
import numpy as np

from facecore.artifacts import sha256_file
from facecore.errors import ArtifactError, DuplicateIdError, InvalidInputError

from .stores import VectorStore

STATE = "state.json"
INDEXES = ("flat", "hnsw")
DEFAULTS = {"index": "flat", "hnsw_m": 32, "ef_construction": 80, "ef_search": 128}


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


class FaissStore(VectorStore):
    """FAISS ``flat`` (exact) or ``hnsw`` (approximate) inner-product index over a segment log."""

    name = "faiss"

    def __init__(self, folder: Path, dim: int, options: dict):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise InvalidInputError(f"unknown faiss store options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.options = {**DEFAULTS, **options}
        if self.options["index"] not in INDEXES:
            raise InvalidInputError(f"faiss index must be one of {INDEXES}, got {self.options['index']!r}")
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

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, dim: int, identity: dict, options: dict) -> "FaissStore":
        store = cls(folder, dim, options)
        store.folder.mkdir(parents=True, exist_ok=True)
        with store._lock():
            store._write_state({"generation": 0, "rows": 0, "segments": [], "index": None})
        store._load_state()
        return store

    @classmethod
    def open(cls, folder: Path, dim: int, identity: dict, options: dict, rebuild: bool = False) -> "FaissStore":
        store = cls(folder, dim, options)
        if not (store.folder / STATE).is_file():
            raise ArtifactError(f"{store.folder} has no {STATE}: not a FAISS gallery, or damaged")
        if rebuild:
            store.rebuild()
        else:
            store._load_state()
        return store

    def close(self) -> None:
        self.checkpoint()
        self._index = None

    def _make_index(self):
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
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is corrupt: {exc}") from exc
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
            if files[:len(self._applied)] != self._applied:
                self._reset()
            try:
                if self._index is None:
                    self._index = self._open_checkpoint(state.get("index")) if use_checkpoint else None
                    self._index = self._index or self._make_index()
                break
            except FileNotFoundError:
                if attempt == 4:
                    raise
        for seg in state["segments"][len(self._applied):]:
            self._apply(seg)
        self._stamp = stamp

    def _open_checkpoint(self, entry: dict | None):
        if not entry:
            return None
        path = self.folder / entry["file"]
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: index file is corrupt (checksum mismatch); the templates are intact: rebuild "
                                f"the index with `advface-cli gallery rebuild {self.folder}`")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ArtifactError(f"{path}: unreadable index file ({exc})") from exc
        if index.ntotal != entry["rows"] or index.d != self.dim:
            raise ArtifactError(f"{path}: index holds {index.ntotal} rows of dim {index.d}, the log says {entry['rows']} of {self.dim}")
        return index

    def _segment(self, seg: dict) -> Path:
        path = self.folder / seg["file"]
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: the gallery lost committed templates")
        if sha256_file(path) != seg["sha256"]:
            raise ArtifactError(f"{path} is corrupt (checksum mismatch): the gallery lost committed templates")
        return path

    def _apply(self, seg: dict) -> None:
        path = self._segment(seg)
        if seg["kind"] == "add":
            with np.load(path, allow_pickle=False) as z:
                ids = z["ids"]
                first = self._rows
                if first + len(ids) > self._index.ntotal:  # not yet in the checkpoint
                    vectors = z["vectors"]
                    self._index.add(np.ascontiguousarray(vectors[self._index.ntotal - first:], dtype=np.float32))
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

    def _commit(self, kind: str, suffix: str, write, rows: int = 0) -> None:
        """Append one segment (written by ``write(fh)``) to the log; caller holds the lock."""
        state, _ = self._read_state()
        generation = state["generation"] + 1
        name = f"{'seg' if kind == 'add' else 'del'}-{generation:08d}{suffix}"
        digest = _write_durable(self.folder / name, write)
        state = {**state, "generation": generation, "rows": state["rows"] + rows,
                 "segments": state["segments"] + [{"file": name, "kind": kind, "sha256": digest}]}
        self._write_state(state)
        self._load_state()

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        with self._lock():
            self._load_state()
            present = [i for i in ids if i in self._keys]
            if present:
                raise DuplicateIdError(f"{len(present)} ids are already enrolled (first: {present[:3]}); nothing was added")
            self._commit("add", ".npz", lambda fh: np.savez(fh, ids=np.asarray(ids, dtype=str),
                                                             vectors=np.ascontiguousarray(vectors, np.float32)), len(ids))

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
        self._write_state({**state, "index": {"file": name, "rows": int(self._index.ntotal), "sha256": digest}})
        if old and old["file"] != name:
            (self.folder / old["file"]).unlink(missing_ok=True)
        self._sweep(state["segments"], name)

    def _sweep(self, segments: list[dict], index_file: str) -> None:
        """Delete files no commit refers to (left by a crash); caller holds the lock."""
        keep = {s["file"] for s in segments} | {index_file, STATE, ".lock"}
        for path in self.folder.iterdir():
            if path.name not in keep and path.name.lstrip(".").startswith(("seg-", "del-", "index-", STATE)):
                path.unlink(missing_ok=True)

    def rebuild(self) -> None:
        """Rebuild the index from the segments (ignoring the checkpoint) and write a fresh checkpoint."""
        with self._lock():
            self._reset()
            self._load_state(use_checkpoint=False)
            state, _ = self._read_state()
            self._write_checkpoint(state)

    # ---- queries ---------------------------------------------------------------------------

    def contains(self, ids: list[str]) -> np.ndarray:
        self._load_state()
        return np.fromiter((i in self._keys for i in ids), bool, len(ids))

    def __len__(self) -> int:
        return len(self._keys)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._load_state()
        if self._params is None:
            cls = faiss.SearchParametersHNSW if self.options["index"] == "hnsw" else faiss.SearchParameters
            self._params = cls(sel=self._selector) if self._selector is not None else cls()
            if self.options["index"] == "hnsw":
                self._params.efSearch = max(int(self.options["ef_search"]), k)
        scores, keys = self._index.search(queries, k, params=self._params)
        scores[keys < 0] = -np.inf
        return self._id_table[keys], scores

    def info(self) -> dict:
        state, _ = self._read_state()
        files = [self.folder / s["file"] for s in state["segments"]]
        index = state.get("index")
        out = {"index": self.options["index"], "rows_ever_added": int(state["rows"]), "commits": int(state["generation"]),
               "segment_bytes": int(sum(p.stat().st_size for p in files if p.is_file())),
               "index_checkpoint_rows": int(index["rows"]) if index else 0,
               "index_bytes": int((self.folder / index["file"]).stat().st_size) if index else 0}
        if self.options["index"] == "hnsw":
            out.update({k: self.options[k] for k in ("hnsw_m", "ef_construction", "ef_search")})
        return out
