"""``Gallery``: protected templates in a vector store, searched 1:N with clean probes."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from facecore.artifacts import sha256_file
from facecore.embeddings import l2_normalize
from facecore.errors import (
    ArtifactError,
    DataError,
    DuplicateIdError,
    IncompatibleError,
    InvalidInputError,
    KeyMismatchError,
    NonFiniteError,
    StoreMissingError,
)
from facecore.tempfiles import describe_os_error

from ..artifact import WEIGHTS, default_artifacts
from ..keys import DeploymentKey, as_key
from ..protector import DEFAULT_MODEL, Protector, check_fresh_noise, default_fresh_noise
from .milvus_store import MAX_ID_LENGTH
from .stores import VectorStore, store_class

MANIFEST = "gallery.json"
FORMAT = "advface-gallery/1"
RAW = "none"


def protector_id(protector: Protector) -> str:
    """``<artifact name>@<first 16 hex of the weights' SHA-256>``: names one exact protector."""
    art = protector.artifact
    return f"{art.directory.name}@{sha256_file(art.directory / WEIGHTS)[:16]}"


@dataclass
class SearchResult:
    """Top-k matches per probe, best first: ``ids`` (str, ``""`` where fewer than k exist) and cosine ``scores``."""

    ids: np.ndarray
    scores: np.ndarray


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with the fields of a gallery manifest of the right format (``None``: nothing)."""
    dim = manifest.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        return f"dim must be a positive integer, got {dim!r}"
    fields = {"protector": {"id": str, "artifact": (str, type(None))}, "recognizer": {"fingerprint": str},
              "store": {"name": str, "options": dict}}
    for name, members in fields.items():
        value = manifest.get(name)
        if not isinstance(value, dict):
            return f"{name} must be a JSON object, got {value!r}"
        for member, kind in members.items():
            if not isinstance(value.get(member), kind):
                return f"{name}.{member} is missing or of the wrong type ({value.get(member)!r})"
    if "key_id" not in manifest or not isinstance(manifest["key_id"], (str, type(None))):
        return f"key_id is missing or of the wrong type ({manifest.get('key_id')!r})"
    return None


def _ids(ids) -> list[str]:
    """``ids`` (one string, or a sequence of strings) as a checked list of unique ids."""
    if isinstance(ids, str):
        ids = [ids]
    try:
        out = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    except TypeError:
        raise InvalidInputError(f"ids must be a string or a sequence of strings, got {type(ids).__name__}") from None
    bad = [i for i in out if not isinstance(i, str) or not i or len(i.encode(errors="replace")) > MAX_ID_LENGTH
           or not i.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in i)]
    if bad:
        raise InvalidInputError(f"ids must be non-empty UTF-8 strings of at most {MAX_ID_LENGTH} bytes; bad: {bad[:3]}")
    if len(set(out)) != len(out):
        dup = [i for i, n in Counter(out).items() if n > 1]
        raise DuplicateIdError(f"{len(dup)} ids are given more than once (first: {dup[:3]}); nothing was changed")
    return out


class Gallery:
    """Protected face templates under unique string ids in a vector store (FAISS by default).

    Create with :meth:`create`, reopen with :meth:`open`. The gallery records the protector's id, the
    recognizer's fingerprint and the deployment key's id (``None``: unkeyed) and refuses
    embeddings, templates, keys and stores of any other. ``enroll`` protects raw embeddings before
    storing them (keyed: ``R · advface(z)``); ``search`` takes clean probes of the same recognizer
    (keyed: prepared with the key first, :meth:`Protector.prepare_probe`). Scores are cosine similarities.
    A keyed gallery opens only with its key (``key=`` file or :class:`DeploymentKey`); the key is never
    stored in the gallery. A bucketed key (``advface-cli keygen --buckets K``) keeps each template in its
    id's bucket, a partition of the store; a search prepares each probe for every bucket, searches each
    bucket's partition and merges the top-k lists, so scores are exactly those of the plain keyed gallery.
    """

    #: probes searched at once in a bucketed gallery: each becomes one query per bucket
    BUCKETED_QUERY_ROWS = 65536

    def __init__(self, folder: Path, manifest: dict, store: VectorStore, protector: Protector | None):
        self.folder, self.manifest, self.store, self.protector = folder, manifest, store, protector

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, protector: str | Path | Protector | None = DEFAULT_MODEL, store: str = "faiss",
               recognizer_fingerprint: str | None = None, key: str | Path | DeploymentKey | None = None,
               fresh_noise: float | None = None, **store_options) -> "Gallery":
        """A new, empty gallery in folder ``path``.

        ``protector``: artifact name / folder / :class:`Protector`, or ``None`` for a raw (unprotected)
        gallery, meant for baselines. ``recognizer_fingerprint`` defaults to the protector's. ``key``: a
        deployment key file (``advface-cli keygen``) or :class:`DeploymentKey` for a keyed gallery (or a
        keyed :class:`Protector`). ``fresh_noise``: relative size of the noise drawn afresh for every enrolled
        template (:meth:`Protector.protect`; needs a key), recorded in the gallery; ``None`` is
        :func:`~advface_sdk.protector.default_fresh_noise` for a bucketed key and 0 otherwise.
        ``store_options``: e.g. ``index="hnsw"``, ``index="ivf", nprobe=32`` or, for Milvus, ``uri=``,
        ``collection=``.
        """
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"{folder} is a file, not a gallery folder")
        if (folder / MANIFEST).exists():
            raise InvalidInputError(f"{folder} already holds a gallery; open it instead")
        if protector is None and key is not None:
            raise InvalidInputError("a raw gallery (protector=None) takes no deployment key")
        prot = cls._protector(protector, key) if protector is not None else None
        if prot is not None:
            prot.artifact.check_recognizer(recognizer_fingerprint)
            recognizer = prot.artifact.config.get("recognizer", {})
            fingerprint, dim = prot.artifact.recognizer_fingerprint, prot.dim
            art = prot.artifact.directory
            ref = art.name if default_artifacts().get(art.name) == art else str(art.resolve())
            prot_info = {"id": protector_id(prot), "artifact": ref}
        else:
            if "dim" not in store_options or recognizer_fingerprint is None:
                raise InvalidInputError("a raw gallery (protector=None) needs dim= and recognizer_fingerprint=")
            dim, fingerprint, recognizer = int(store_options.pop("dim")), recognizer_fingerprint, {}
            prot_info = {"id": RAW, "artifact": None}
        if prot is not None and prot.buckets > 1:
            if store_options.get("partitions") not in (None, prot.buckets):
                raise InvalidInputError(f"a gallery of deployment key {prot.key_id} keeps one partition per bucket "
                                        f"({prot.buckets}); do not pass partitions=")
            store_options["partitions"] = prot.buckets
        if fresh_noise is None:
            fresh_noise = default_fresh_noise(dim) if prot is not None and prot.buckets > 1 else 0.0
        if fresh_noise:
            if prot is None:
                raise InvalidInputError("a raw gallery (protector=None) takes no fresh_noise")
            fresh_noise = prot._check_noise(fresh_noise)
        manifest = {"format": FORMAT, "dim": dim, "metric": "cosine", "protector": prot_info,
                    "key_id": prot.key_id if prot is not None else None, "fresh_noise": float(fresh_noise),
                    "recognizer": {"fingerprint": fingerprint, "name": recognizer.get("name")},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        existed, backend = folder.exists(), None
        tmp = folder / f".{MANIFEST}.tmp{os.getpid()}"
        try:
            backend = store_class(store).create(folder, dim, cls._identity(manifest), store_options)
            manifest["store"] = {"name": store, "options": backend.options}
            tmp.write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(tmp, folder / MANIFEST)
        except BaseException as exc:  # a store that cannot be made, a full disk, Ctrl-C: leave nothing behind
            if backend is not None:
                backend.drop()  # what the store made outside the folder (a Milvus collection)
            if existed:
                tmp.unlink(missing_ok=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, OSError):
                raise DataError(describe_os_error(exc, str(folder))) from exc
            raise
        return cls(folder, manifest, backend, prot)

    @staticmethod
    def _protector(protector: str | Path | Protector, key) -> Protector:
        """``protector`` as a :class:`Protector` holding ``key`` (a keyed Protector given as is must hold that key)."""
        if not isinstance(protector, Protector):
            return Protector(protector, key=key)
        if key is not None and as_key(key).key_id != protector.key_id:
            raise KeyMismatchError(f"deployment key {as_key(key).key_id} differs from the protector's key {protector.key_id}")
        return protector

    @classmethod
    def open(cls, path: str | Path, protector: str | Path | Protector | None = None, recognizer_fingerprint: str | None = None,
             key_id: str | None = None, rebuild_index: bool = False, key: str | Path | DeploymentKey | None = None,
             **store_options) -> "Gallery":
        """Open the gallery in folder ``path``.

        ``protector`` defaults to the recorded artifact; any protector, fingerprint or key id given must
        be the recorded one (:class:`IncompatibleError` otherwise). A keyed gallery needs its ``key``
        (file or :class:`DeploymentKey`, or a keyed ``protector``): a missing or other key is a
        :class:`KeyMismatchError`, as is a key for an unkeyed gallery. ``store_options`` override the
        recorded ones (``uri=`` of a moved Milvus, ``ef_search=``, ``nprobe=``). ``rebuild_index``
        recomputes a damaged FAISS index from the committed templates (an IVF index is retrained).
        """
        folder = Path(path)
        manifest = cls._manifest(folder)
        recorded = manifest["protector"]
        if recorded["id"] == RAW:
            if protector is not None:
                raise IncompatibleError(f"{folder} is a raw (unprotected) gallery, not one of protector {protector}")
            if key is not None:
                raise KeyMismatchError(f"{folder} is a raw (unprotected) gallery: it takes no deployment key")
            prot = None
        else:
            if isinstance(protector, Protector):
                prot = cls._protector(protector, key)
            else:
                prot = Protector(protector or recorded["artifact"])
                if protector_id(prot) == recorded["id"] and key is not None:
                    prot = Protector(prot.artifact, key=key)
            if protector_id(prot) != recorded["id"]:
                raise IncompatibleError(f"{folder} holds templates of protector {recorded['id']}, not {protector_id(prot)}")
            cls._check_key(folder, manifest.get("key_id"), prot.key_id)
        try:
            if check_fresh_noise(manifest.get("fresh_noise", 0.0)) and manifest.get("key_id") is None:
                raise InvalidInputError("fresh_noise belongs to keyed galleries only")
        except InvalidInputError as exc:
            raise ArtifactError(f"{folder / MANIFEST} is corrupt: {exc}") from None
        gallery = cls(folder, manifest, None, prot)
        gallery._check_provenance(recognizer_fingerprint, key_id if key_id is not None else gallery.key_id)
        options = {**manifest["store"]["options"], **store_options}
        gallery.store = store_class(manifest["store"]["name"]).open(folder, manifest["dim"], cls._identity(manifest), options,
                                                                    rebuild=rebuild_index)
        return gallery

    @classmethod
    def delete(cls, path: str | Path, missing_ok: bool = False, **store_options) -> int:
        """Delete the gallery in folder ``path``: every template in its store (a Milvus collection, on a server too)
        and then the folder; returns how many templates there were. Needs no key or protector; a store that holds
        another gallery is refused (:class:`IncompatibleError`) and nothing is deleted. ``store_options`` as in
        :meth:`open` (``uri=`` of a moved Milvus).

        A gallery whose store is already gone (its Milvus collection dropped, its Lite database or a FAISS segment
        lost) raises :class:`StoreMissingError` and keeps its folder, since a wrong ``uri`` looks the same; with
        ``missing_ok=True`` the folder is removed and 0 returned (``DROP ... IF EXISTS``)."""
        folder = Path(path)
        manifest = cls._manifest(folder)
        options = {**manifest["store"]["options"], **store_options}
        kind = store_class(manifest["store"]["name"])
        try:
            store = kind.open(folder, manifest["dim"], cls._identity(manifest), options)
        except StoreMissingError as exc:
            if not missing_ok:
                raise StoreMissingError(f"{exc}; nothing was deleted. If the store moved, pass its uri; if its templates "
                                        "are gone, delete with missing_ok=True (advface-cli gallery delete "
                                        "--missing-ok) to remove the folder") from exc
            kind.discard(folder, options)
            shutil.rmtree(folder)
            return 0
        count = len(store)
        store.drop()
        shutil.rmtree(folder)
        return count

    @staticmethod
    def _manifest(folder: Path) -> dict:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactError(f"no gallery at {folder} (no {MANIFEST}); `advface-cli gallery enroll` creates one") from None
        except OSError as exc:
            raise ArtifactError(f"cannot read {folder / MANIFEST}: {exc.strerror or exc}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{folder / MANIFEST} is corrupt: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ArtifactError(f"{folder}: unknown gallery format {found!r}, expected {FORMAT}")
        problem = _manifest_problem(manifest)
        if problem:
            raise ArtifactError(f"{folder / MANIFEST} is corrupt or was edited: {problem}")
        return manifest

    @staticmethod
    def _check_key(folder: Path, recorded: str | None, given: str | None) -> None:
        if recorded == given:
            return
        if given is None:
            raise KeyMismatchError(f"{folder} is a keyed gallery (deployment key {recorded}): open it with its key "
                                   "(key=KEYFILE, advface-cli gallery ... -K KEYFILE)")
        if recorded is None:
            raise KeyMismatchError(f"{folder} is not keyed; deployment key {given} does not belong to it")
        raise KeyMismatchError(f"deployment key {given} is not the key of {folder} ({recorded}): templates and probes of "
                               "different keys never match")

    @staticmethod
    def _identity(manifest: dict) -> dict:
        """What a store must agree on to hold this gallery's templates."""
        return {"format": manifest["format"], "dim": manifest["dim"], "protector": manifest["protector"]["id"],
                "recognizer": manifest["recognizer"]["fingerprint"], "key_id": manifest["key_id"]}

    def close(self) -> None:
        """Checkpoint derived index data and release the store."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- properties ------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def protector_id(self) -> str:
        return self.manifest["protector"]["id"]

    @property
    def recognizer_fingerprint(self) -> str:
        return self.manifest["recognizer"]["fingerprint"]

    @property
    def key_id(self) -> str | None:
        return self.manifest["key_id"]

    @property
    def fresh_noise(self) -> float:
        """Relative size of the noise drawn afresh for every enrolled template (0: none; galleries made before it: 0)."""
        return float(self.manifest.get("fresh_noise", 0.0))

    def __len__(self) -> int:
        self.store.refresh()
        return len(self.store)

    def info(self) -> dict:
        """The manifest, the number of templates and the store's own facts."""
        return {**self.manifest, "folder": str(self.folder), "templates": len(self), "store_info": self.store.info()}

    # ---- operations ------------------------------------------------------------------------

    def _check_provenance(self, fingerprint: str | None, key_id: str | None) -> None:
        if fingerprint is not None and fingerprint != self.recognizer_fingerprint:
            raise IncompatibleError(f"embeddings of recognizer {fingerprint} do not belong in {self.folder}, a gallery of "
                                    f"recognizer {self.recognizer_fingerprint} ({self.manifest['recognizer']['name']})")
        if key_id != self.key_id:
            raise KeyMismatchError(f"key {key_id} does not match the gallery's key {self.key_id} ({self.folder})")

    def _matrix(self, x, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim not in (1, 2):
            raise InvalidInputError(f"{what} must be a float array of shape (D,) or (N, D), got {x.dtype} {x.shape}")
        x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        if x.shape[1] != self.dim:
            raise InvalidInputError(f"{what} have dimension {x.shape[1]}, the gallery {self.folder} holds {self.dim}-d templates")
        if not np.isfinite(x).all():
            rows = np.flatnonzero(~np.isfinite(x).all(axis=1))[:5].tolist()
            raise NonFiniteError(f"{what} contain NaN or Inf (rows {rows}); nothing was changed")
        zero = np.flatnonzero(~x.any(axis=1))
        if zero.size:
            raise InvalidInputError(f"{what} hold all-zero rows {zero[:5].tolist()}; nothing was changed")
        return x

    def enroll(self, ids, embeddings, fingerprint: str | None = None, protected_by: str | None = None,
               key_id: str | None = None) -> int:
        """Protect and store ``embeddings`` (N, D) under new unique ``ids``; all or nothing, durable on return.

        ``fingerprint``: the recognizer that produced them, checked when given. ``protected_by``:
        the embeddings are already templates of that protector id (must be this gallery's), made with the
        deployment key ``key_id`` (must be this gallery's; ``None`` = unkeyed); they are stored as given, so
        add the gallery's :attr:`fresh_noise` when making them (``protect(..., fresh_noise=gallery.fresh_noise)``).
        ``key_id`` without ``protected_by`` is checked against the gallery's key when given.
        """
        ids = _ids(ids)
        x = self._matrix(embeddings, "embeddings")
        if len(ids) != len(x):
            raise InvalidInputError(f"{len(ids)} ids for {len(x)} embeddings")
        self._check_provenance(fingerprint, key_id if key_id is not None or protected_by is not None else self.key_id)
        if protected_by is not None:
            if protected_by != self.protector_id:
                raise IncompatibleError(f"templates of protector {protected_by} do not belong in {self.folder}, a gallery "
                                        f"of protector {self.protector_id}")
        elif self.protector is not None:
            x = self.protector.protect(x, users=ids if self._bucketed else None, fresh_noise=self.fresh_noise)
        parts = self.protector.key.bucket(ids) if self._bucketed else None
        self.store.add(ids, l2_normalize(x).astype(np.float32), parts)
        return len(ids)

    @property
    def _bucketed(self) -> bool:
        return self.protector is not None and self.protector.buckets > 1

    def search(self, probes, k: int = 5, fingerprint: str | None = None) -> SearchResult:
        """Top-``k`` enrolled ids and cosine scores for each clean probe embedding (N, D) (keyed: prepared with the key)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be an integer of at least 1, got {k!r}")
        self._check_provenance(fingerprint, self.key_id)
        x = self._matrix(probes, "probes")
        if self._bucketed:
            return self._search_buckets(x, int(k))
        if self.protector is not None and self.protector.key is not None:
            x = self.protector.prepare_probe(x)
        ids, scores = self.store.search(l2_normalize(x).astype(np.float32, copy=False), int(k))
        return SearchResult(ids, scores)

    def _search_buckets(self, x: np.ndarray, k: int) -> SearchResult:
        """Each probe prepared for every bucket, each searched in its bucket's partition, the K top-k lists merged."""
        buckets = self.protector.buckets
        ids, scores = np.empty((len(x), k), object), np.empty((len(x), k), np.float32)
        step = max(1, self.BUCKETED_QUERY_ROWS // buckets)
        for start in range(0, len(x), step):
            queries = self.protector._every_bucket(l2_normalize(x[start:start + step]).astype(np.float32, copy=False))
            ids[start:start + step], scores[start:start + step] = self.store.search_every_partition(queries, k)
        return SearchResult(ids.astype(str), scores)

    def remove(self, ids) -> int:
        """Delete these ids (those enrolled); returns how many were removed."""
        return self.store.remove(_ids(ids))

    def contains(self, ids) -> np.ndarray:
        """Boolean mask of the ids that are enrolled."""
        self.store.refresh()
        return self.store.contains(_ids(ids))
