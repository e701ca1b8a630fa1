"""Chunked protection of ``.npy`` / ``.npz`` files without loading them whole.

The output is written to ``.DST.tmp<PID>`` and renamed into place on success; a failed write
(full disk, file-size limit), Ctrl-C or SIGTERM removes it, and temp files left by killed
runs (dead PIDs) are removed by the next run. An ``.npz`` keeps every member: only ``key`` is
replaced by its protected version, and a stored recognizer ``fingerprint`` must match the
protector's. A keyed protector's ``.npz`` output also records what it holds: ``kind`` (``templates`` or
``probes``), ``protector_id`` and the deployment ``key_id`` (never the key itself), which
:meth:`Protector.load_keyed` checks; an input that already carries them is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from facecore.embeddings import ZIP_ERRORS
from facecore.errors import DataError, FacePrivacyError, IncompatibleError, InvalidInputError
from facecore.tempfiles import describe_os_error, remove_stale, temp_path, terminate_as_interrupt

_MAGIC = b"\x93NUMPY"


def _read_header(fh, where: str):
    magic = fh.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC:
        raise DataError(f"{where} is not a NumPy array file (no .npy header): empty, truncated or another format")
    reader = np.lib.format.read_array_header_1_0 if magic[6] == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = reader(fh)
    except (ValueError, EOFError, OSError, TypeError, SyntaxError) as exc:
        raise DataError(f"{where} has a damaged .npy header: {exc}") from exc
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects; embeddings must be a float array (pickles are never loaded)")
    if fortran:
        raise DataError(f"{where} is Fortran-ordered; save it C-ordered")
    return shape, dtype


def _open_npz(src: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(src)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{src} is not a valid .npz file ({exc})") from exc


def _npz_member(src: Path, key: str):
    """``(zipfile, open member, shape, dtype)`` of array ``key`` of an ``.npz``, positioned after its header."""
    zf = _open_npz(src)
    name = f"{key}.npy"
    if name not in zf.namelist():
        zf.close()
        raise DataError(f"{src} has no array {key!r} (arrays: {[n[:-4] for n in zf.namelist()]}); use --key")
    fh = zf.open(name)
    try:
        shape, dtype = _read_header(fh, f"{src}:{key}")
    except DataError:
        zf.close()
        raise
    return zf, fh, shape, dtype


def _npz_fingerprint(zf: zipfile.ZipFile, src: Path) -> str | None:
    if "fingerprint.npy" not in zf.namelist():
        return None
    try:
        with zf.open("fingerprint.npy") as fh:
            value = np.lib.format.read_array(fh, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{src}: unreadable 'fingerprint' member: {exc}") from exc
    return str(value.item()) if value.size == 1 else None


@contextlib.contextmanager
def _no_sigxfsz() -> Iterator[None]:
    """A file-size limit makes writes fail with EFBIG (reported) instead of killing the process."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGXFSZ"):
        yield
        return
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGXFSZ, previous)


def _reserve(fh, size: int) -> None:
    """Allocate ``size`` bytes up front: a full disk fails here, before any work, not with SIGBUS later."""
    try:
        os.posix_fallocate(fh.fileno(), 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


META = ("kind", "protector_id", "key_id")


def stream_protect(protector, src: Path, dst: Path, key: str = "embeddings", chunk: int = 65536,
                   kind: str = "templates", salt: bytes | str | None = None) -> int:
    """Protect ``src`` into ``dst`` (same format as ``dst``'s suffix) chunk by chunk; atomic on success.

    ``kind="probes"`` prepares clean probes for a keyed store instead (:meth:`Protector.prepare_probe`);
    ``salt``: one user's salt for every row (keyed protectors only; see :mod:`advface_sdk.keys`).
    """
    if kind not in ("templates", "probes"):
        raise InvalidInputError(f"kind must be 'templates' or 'probes', got {kind!r}")
    if protector.buckets > 1 and salt is None:
        raise InvalidInputError(f"deployment key {protector.key_id} has {protector.buckets} buckets: templates are protected "
                                "under their ids and probes prepared per bucket; use `advface-cli gallery enroll/search` "
                                "or Protector.protect(..., users=ids) / prepare_probe in Python")
    plan = protector._plan(salt, None, probe=kind == "probes")
    method = protector._protect_rows if kind == "templates" else protector._probe_rows

    def rows_fn(x: np.ndarray, start: int) -> np.ndarray:
        return method(x, start, plan)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError(f"input file not found: {src}")
    if src.suffix not in (".npy", ".npz") or dst.suffix not in (".npy", ".npz"):
        raise InvalidInputError("input and output must be .npy or .npz files")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise InvalidInputError(f"chunk must be a positive integer, got {chunk!r}")
    remove_stale(dst)
    with contextlib.ExitStack() as stack:
        zf = None
        if src.suffix == ".npy":
            fh = stack.enter_context(open(src, "rb"))
            shape, dtype = _read_header(fh, str(src))
            data_start = fh.tell()
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            if os.fstat(fh.fileno()).st_size < data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise DataError(f"{src} is truncated: its header promises shape {shape} {dtype}")
        else:
            zf = stack.enter_context(_open_npz(src))
            if f"{key}.npy" not in zf.namelist():
                raise DataError(f"{src} has no array {key!r} (arrays: {[n[:-4] for n in zf.namelist()]}); use --key")
            done = sorted({f"{m}.npy" for m in META} & set(zf.namelist()))
            if done:
                raise InvalidInputError(f"{src} was already written by advface-cli (members {[n[:-4] for n in done]}); "
                                        "protect or prepare clean embeddings")
            fingerprint = _npz_fingerprint(zf, src)
            if fingerprint is not None and fingerprint != protector.artifact.recognizer_fingerprint:
                raise IncompatibleError(
                    f"{src} was embedded by recognizer {fingerprint}, but artifact {protector.artifact.directory.name} "
                    f"protects embeddings of {protector.artifact.recognizer_fingerprint}; use the matching artifact")
            fh = stack.enter_context(zf.open(f"{key}.npy"))
            shape, dtype = _read_header(fh, f"{src}:{key}")
            row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        if len(shape) != 2:
            raise InvalidInputError(f"{src}: expected a 2-d (N, D) array of embeddings, got shape {shape}")
        protector._check(None, dtype.name, shape)

        def read(start: int, stop: int) -> np.ndarray:
            try:
                data = fh.read((stop - start) * row)
            except ZIP_ERRORS as exc:
                raise DataError(f"{src} is damaged ({exc}); nothing was written") from exc
            if len(data) != (stop - start) * row:
                raise DataError(f"{src} is truncated at row {start}")
            return np.frombuffer(data, dtype).reshape((stop - start,) + tuple(shape[1:]))

        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
        body = int(shape[0]) * row
        others = [i for i in zf.infolist() if i.filename != f"{key}.npy"] if zf is not None else []
        need = body + 4096 + sum(i.file_size for i in others)
        free = shutil.disk_usage(dst.parent if dst.parent.exists() else Path.cwd()).free
        if free < need:
            raise DataError(f"not enough disk space for {dst}: needs {need / 1e6:.1f} MB, {free / 1e6:.1f} MB free "
                            "(nothing was written)")
        tmp = temp_path(dst)
        try:
            with terminate_as_interrupt(), _no_sigxfsz():
                if dst.suffix == ".npy":
                    with open(tmp, "wb") as out:
                        np.lib.format.write_array_header_1_0(out, header) if body < 2**32 else \
                            np.lib.format.write_array_header_2_0(out, header)
                        _reserve(out, out.tell() + body)
                        _protect_chunks(rows_fn, read, shape[0], chunk, out.write)
                        out.flush()
                        os.fsync(out.fileno())
                else:
                    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
                        with zout.open(f"{key}.npy", "w", force_zip64=True) as fo:
                            np.lib.format.write_array_header_1_0(fo, header)
                            _protect_chunks(rows_fn, read, shape[0], chunk, fo.write)
                        meta = {"kind": kind, "protector_id": protector.artifact.protector_id, "key_id": protector.key_id}
                        for name, value in meta.items() if protector.key is not None else ():
                            with zout.open(f"{name}.npy", "w") as fo:
                                np.lib.format.write_array(fo, np.asarray(value), allow_pickle=False)
                        for info in others:  # every other member (relpaths, labels, fingerprint, ...) verbatim
                            copy = zipfile.ZipInfo(info.filename, info.date_time)
                            copy.compress_type, copy.external_attr = info.compress_type, info.external_attr
                            with zf.open(info) as fi, zout.open(copy, "w", force_zip64=True) as fo:
                                shutil.copyfileobj(fi, fo, 1 << 20)
                os.replace(tmp, dst)
        except ZIP_ERRORS as exc:
            raise DataError(f"{src} is damaged ({exc}); nothing was written") from exc
        except OSError as exc:
            if isinstance(exc, FacePrivacyError):
                raise
            raise DataError(describe_os_error(exc, str(dst))) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return int(shape[0])


def _protect_chunks(rows_fn, read, rows: int, chunk: int, write) -> None:
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        write(np.ascontiguousarray(rows_fn(read(start, stop), start)).tobytes())
