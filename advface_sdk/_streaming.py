"""Chunked protection of ``.npy`` / ``.npz`` files without loading them whole."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from facecore.errors import DataError, InvalidInputError


def _npz_member(src: Path, key: str):
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{src} is not a valid .npz file") from exc
    name = f"{key}.npy"
    if name not in zf.namelist():
        raise DataError(f"{src} has no array {key!r} (arrays: {[n[:-4] for n in zf.namelist()]}); use --key")
    fh = zf.open(name)
    version = np.lib.format.read_magic(fh)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(fh)
    if fortran:
        raise DataError(f"{src}:{key} is Fortran-ordered; save it C-ordered")
    return zf, fh, shape, dtype


def stream_protect(protector, src: Path, dst: Path, key: str = "embeddings", chunk: int = 65536) -> int:
    """Protect ``src`` into ``dst`` (same format as ``dst``'s suffix) chunk by chunk; atomic on success."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError(f"input file not found: {src}")
    if src.suffix not in (".npy", ".npz") or dst.suffix not in (".npy", ".npz"):
        raise InvalidInputError("input and output must be .npy or .npz files")
    if chunk <= 0:
        raise InvalidInputError("chunk must be positive")
    zf = None
    if src.suffix == ".npy":
        try:
            arr = np.load(src, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"cannot read {src}: {exc}") from exc
        shape, dtype = arr.shape, arr.dtype

        def read(start, stop):
            return np.asarray(arr[start:stop])
    else:
        zf, fh, shape, dtype = _npz_member(src, key)
        row = int(np.prod(shape[1:])) * dtype.itemsize

        def read(start, stop):
            data = fh.read((stop - start) * row)
            return np.frombuffer(data, dtype).reshape((stop - start,) + tuple(shape[1:]))
    if len(shape) != 2:
        raise InvalidInputError(f"{src}: expected a 2-d (N, D) array of embeddings, got shape {shape}")
    protector._check(None, dtype.name, shape)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    try:
        if dst.suffix == ".npy":
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            for start in range(0, shape[0], chunk):
                stop = min(start + chunk, shape[0])
                out[start:stop] = protector.protect(read(start, stop))
            out.flush()
            del out
        else:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zout:
                with zout.open(f"{key}.npy", "w", force_zip64=True) as fo:
                    np.lib.format.write_array_header_1_0(fo, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                              "fortran_order": False, "shape": shape})
                    for start in range(0, shape[0], chunk):
                        stop = min(start + chunk, shape[0])
                        fo.write(np.ascontiguousarray(protector.protect(read(start, stop))).tobytes())
        os.replace(tmp, dst)
    finally:
        if zf is not None:
            zf.close()
        if tmp.exists():
            tmp.unlink()
    return int(shape[0])
