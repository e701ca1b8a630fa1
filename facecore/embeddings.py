"""Embedding extraction with an on-disk cache: each image is embedded once per recognizer, ever.

The cache is one ``.npz`` per (recognizer fingerprint, dataset root, flip) holding one row per
image, keyed by relative path, file size and modification time, with a digest of the file's bytes;
new or changed images are embedded and merged, everything else is read back. An image whose
modification time changed but whose bytes did not (a copy, ``rsync`` without ``-t``, a checkout)
is recognised by its digest and not embedded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from .data.identity_folder import IdentityFolderDataset
from .errors import DataError, FacePrivacyError
from .paths import cache_dir
from .recognizers.base import Recognizer
from .tempfiles import describe_os_error, remove_stale, temp_path, terminate_as_interrupt


#: what reading a damaged ``.npz`` member raises (a bad CRC, a broken deflate stream)
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error)


@contextlib.contextmanager
def read_npz(path: str | Path) -> Iterator[np.lib.npyio.NpzFile]:
    """``np.load`` of an ``.npz`` (pickles never loaded); a missing, damaged or other file, or an unreadable member
    read inside the block, is a :class:`DataError`."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a .npy array, not an .npz archive of named arrays")
        with data:
            yield data
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (ValueError, OSError, EOFError, *ZIP_ERRORS) as exc:
        if isinstance(exc, FacePrivacyError):
            raise
        raise DataError(f"{path} is not a readable .npz ({exc})") from exc


def atomic_save_npz(path: str | Path, **arrays) -> None:
    """Write an ``.npz`` to a temporary file, then rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = temp_path(path, ".npz")
    try:
        with terminate_as_interrupt():
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
    except OSError as exc:
        raise DataError(describe_os_error(exc, str(path))) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _stamps(paths: list[Path]) -> np.ndarray:
    out = np.empty((len(paths), 2), np.int64)
    for i, p in enumerate(paths):
        try:
            st = p.stat()
        except FileNotFoundError:
            raise DataError(f"image file not found: {p}") from None
        out[i] = (st.st_size, st.st_mtime_ns)
    return out


def _cache_file(recognizer: Recognizer, root: Path, flip: bool) -> Path:
    key = hashlib.sha256(f"{recognizer.fingerprint}|{root.resolve()}|{flip}".encode()).hexdigest()[:20]
    return cache_dir() / "embeddings" / f"{recognizer.fingerprint}-{key}.npz"


def _digest(path: Path) -> np.ndarray:
    """16-byte BLAKE2b digest of a file's bytes (the cache's check for an image whose modification time changed)."""
    try:
        return np.frombuffer(hashlib.blake2b(path.read_bytes(), digest_size=16).digest(), np.uint8)
    except OSError as exc:
        raise DataError(describe_os_error(exc, str(path))) from exc


def extract_embeddings(
    recognizer: Recognizer,
    dataset: IdentityFolderDataset,
    flip: bool = False,
    batch_size: int = 256,
    use_cache: bool = True,
    progress: bool = True,
) -> np.ndarray:
    """float32 ``(len(dataset), dim)`` embeddings in dataset order (horizontally flipped crops if ``flip``)."""
    rel = np.asarray(dataset.relpaths)
    stamps = _stamps(dataset.paths)
    out = np.zeros((len(rel), recognizer.dim), np.float32)
    digests = np.zeros((len(rel), 16), np.uint8)  # all zero: not known
    todo = np.ones(len(rel), bool)
    cache = _cache_file(recognizer, dataset.root, flip)
    cached_rel = cached_stamps = cached_emb = cached_digests = None
    restamped = False
    if use_cache and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                cached_rel, cached_stamps, cached_emb = z["relpaths"], z["stamps"], z["embeddings"]
                cached_digests = z["digests"] if "digests" in z.files else np.zeros((len(cached_rel), 16), np.uint8)
        except Exception:  # unreadable cache: recompute, it will be rewritten
            cached_rel = None
        if cached_rel is not None and cached_emb.shape[1] == recognizer.dim:
            lookup = {r: i for i, r in enumerate(cached_rel.tolist())}
            for i, r in enumerate(rel.tolist()):
                j = lookup.get(r)
                if j is None or cached_stamps[j][0] != stamps[i][0]:
                    continue
                if cached_stamps[j][1] != stamps[i][1]:  # same size, touched: the same bytes?
                    if not cached_digests[j].any() or (_digest(dataset.paths[i]) != cached_digests[j]).any():
                        continue
                    restamped = True
                out[i], digests[i], todo[i] = cached_emb[j], cached_digests[j], False
        else:
            cached_rel = None
    missing = np.flatnonzero(todo)
    if len(missing):
        bar = tqdm(total=len(missing), desc=f"embed[{recognizer.name}]", unit="img", disable=not progress)
        for start in range(0, len(missing), batch_size):
            idx = missing[start : start + batch_size]
            crops = np.stack([dataset.load(i) for i in idx])
            if flip:
                crops = np.ascontiguousarray(crops[:, :, ::-1])
            out[idx] = recognizer.embed(crops)
            if use_cache:
                digests[idx] = [_digest(dataset.paths[i]) for i in idx]
            bar.update(len(idx))
        bar.close()
    if use_cache and (len(missing) or restamped):
        keep_rel, keep_stamps, keep_emb, keep_digests = rel, stamps, out, digests
        if cached_rel is not None:  # keep rows of images outside this dataset view
            extra = ~np.isin(cached_rel, rel)
            keep_rel = np.concatenate([rel, cached_rel[extra]])
            keep_stamps = np.concatenate([stamps, cached_stamps[extra]])
            keep_emb = np.concatenate([out, cached_emb[extra]])
            keep_digests = np.concatenate([digests, cached_digests[extra]])
        atomic_save_npz(cache, relpaths=keep_rel, stamps=keep_stamps, embeddings=keep_emb, digests=keep_digests,
                        fingerprint=np.asarray(recognizer.fingerprint))
    return out


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
