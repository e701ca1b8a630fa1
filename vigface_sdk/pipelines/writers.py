"""Dataset writers: identity folders, InsightFace RecordIO (pure Python, no mxnet) and a JSONL manifest.

RecordIO follows dmlc-core's ``RecordIOWriter``: each record is ``magic (0xced7230a) | lrec | data``
padded to 4 bytes, ``lrec = cflag << 29 | length``; a payload holding the magic at a 4-byte-aligned
offset is split there into parts (cflag 1 = first, 2 = middle, 3 = last). ``.idx`` lines are
``key\\tbyte offset``. Each image record is MXNet's ``IRHeader`` (``struct 'IfQQ'``: flag, label,
id, id2) + JPEG bytes. InsightFace/arcface_torch convention: record 0 is a header with
``flag=2, label=(N + 1, N + 1 + C)``; images are records ``1..N`` (label = class); records
``N + 1 .. N + C`` hold each class's image range ``(start, end)``. ``MXFaceDataset`` reads
``imgidx = range(1, int(header0.label[0]))``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from facecore.errors import DataError, InvalidInputError
from facecore.tempfiles import temp_path

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
IR_FORMAT = "IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)
_LEN_MASK = (1 << 29) - 1


def encode_jpeg(image_rgb: np.ndarray, quality: int = 95) -> bytes:
    """uint8 RGB ``(H, W, 3)`` → JPEG bytes (no chroma subsampling: small faces keep their colour detail)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]), params)
    if not ok:
        raise InvalidInputError(f"cannot JPEG-encode an image of shape {image_rgb.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes → uint8 RGB ``(H, W, 3)``."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError("cannot decode an image record (corrupt JPEG)")
    return image[..., ::-1].copy()


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename; the temporary file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_image(path: str | Path, image_rgb: np.ndarray, quality: int = 95) -> Path:
    """One image file (``.jpg``) of an identity folder, written atomically."""
    return atomic_write(path, encode_jpeg(image_rgb, quality))


def write_manifest(path: str | Path, rows: Iterable[dict]) -> Path:
    """JSON Lines, one row per image, written atomically."""
    return atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def read_manifest(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not a JSONL manifest: {exc}") from exc


# --- MXNet IRHeader ---------------------------------------------------------------------------
def pack_record(label, payload: bytes, id: int = 0, id2: int = 0) -> bytes:
    """``mx.recordio.pack``: a scalar label goes in the header (flag 0); a vector label follows it (flag = size)."""
    if np.ndim(label) == 0:
        return struct.pack(IR_FORMAT, 0, float(label), int(id), int(id2)) + payload
    vec = np.asarray(label, np.float32).ravel()
    return struct.pack(IR_FORMAT, vec.size, 0.0, int(id), int(id2)) + vec.tobytes() + payload


def unpack_record(record: bytes) -> tuple[int, float | np.ndarray, int, int, bytes]:
    """``mx.recordio.unpack``: ``(flag, label, id, id2, payload)``; ``label`` is an array when flag > 0."""
    if len(record) < IR_SIZE:
        raise DataError(f"record of {len(record)} bytes is shorter than an IRHeader")
    flag, label, rid, rid2 = struct.unpack(IR_FORMAT, record[:IR_SIZE])
    body = record[IR_SIZE:]
    if flag > 0:
        label = np.frombuffer(body[: 4 * flag], np.float32).copy()
        body = body[4 * flag:]
    return flag, label, rid, rid2, body


# --- dmlc RecordIO ----------------------------------------------------------------------------
class RecordIOWriter:
    """Indexed RecordIO writer (``MXIndexedRecordIO(idx, rec, 'w')``); files appear only on ``close``."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        self.rec_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_rec = temp_path(self.rec_path)
        self._fh = open(self._tmp_rec, "wb")
        self._index: list[str] = []

    def write_idx(self, key: int, record: bytes) -> None:
        if len(record) >= 1 << 29:
            raise InvalidInputError("RecordIO records must be smaller than 2^29 bytes")
        self._index.append(f"{int(key)}\t{self._fh.tell()}\n")
        aligned = len(record) & ~3
        start, parts = 0, []
        for i in range(0, aligned, 4):
            if record[i:i + 4] == _MAGIC_BYTES:
                parts.append((1 if start == 0 else 2, record[start:i]))
                start = i + 4
        parts.append((3 if start else 0, record[start:]))
        for cflag, chunk in parts:
            self._fh.write(_MAGIC_BYTES + struct.pack("<I", cflag << 29 | len(chunk)) + chunk)
        pad = -len(parts[-1][1]) % 4
        self._fh.write(b"\0" * pad)

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.close()
            atomic_write(self.idx_path, "".join(self._index).encode())
            os.replace(self._tmp_rec, self.rec_path)
        finally:
            self._tmp_rec.unlink(missing_ok=True)

    def abort(self) -> None:
        self._fh.close()
        self._tmp_rec.unlink(missing_ok=True)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.abort() if exc_type else self.close()


class RecordIOReader:
    """Indexed RecordIO reader (``MXIndexedRecordIO(idx, rec, 'r')``): ``keys`` and ``read_idx(key)``."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        rec_path, idx_path = Path(rec_path), Path(idx_path)
        for p in (rec_path, idx_path):
            if not p.is_file():
                raise DataError(f"RecordIO file not found: {p}")
        self.offsets: dict[int, int] = {}
        try:
            for line in idx_path.read_text().splitlines():
                if line.strip():
                    key, pos = line.split("\t")
                    self.offsets[int(key)] = int(pos)
        except ValueError as exc:
            raise DataError(f"{idx_path} is not a RecordIO index: {exc}") from exc
        self.keys = list(self.offsets)
        self._data = rec_path.read_bytes()

    def read_idx(self, key: int) -> bytes:
        if key not in self.offsets:
            raise DataError(f"record {key} is not in the index")
        pos, out = self.offsets[key], []
        while True:
            if pos + 8 > len(self._data):
                raise DataError("truncated RecordIO file")
            magic, lrec = struct.unpack("<II", self._data[pos:pos + 8])
            if magic != MAGIC:
                raise DataError(f"invalid RecordIO file: bad magic at byte {pos}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            out.append(self._data[pos + 8:pos + 8 + length])
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(out)

    def __len__(self) -> int:
        return len(self.keys)


# --- InsightFace layout -----------------------------------------------------------------------
def write_insightface_recordio(directory: str | Path, items: Iterable[tuple[int, bytes]], num_images: int,
                               num_classes: int, image_size: tuple[int, int]) -> Path:
    """Stream ``(label, jpeg_bytes)`` items, sorted by label in ``0 .. num_classes - 1``, into ``train.rec``,
    ``train.idx`` and ``property`` (``num_images`` is needed up front for the header record)."""
    directory = Path(directory)
    starts = np.full(num_classes + 1, -1, np.int64)
    with RecordIOWriter(directory / "train.rec", directory / "train.idx") as w:
        w.write_idx(0, pack_record([num_images + 1, num_images + 1 + num_classes], b""))
        count, last = 0, -1
        for count, (lab, jpeg) in enumerate(items, start=1):
            if not last <= lab < num_classes:
                raise InvalidInputError(f"items must be sorted by label, with labels in 0..{num_classes - 1}; got {lab} after {last}")
            starts[last + 1:lab + 1] = count
            last = lab
            w.write_idx(count, pack_record(float(lab), jpeg, id=count))
        if count != num_images:
            raise InvalidInputError(f"expected {num_images} images, got {count}")
        starts[last + 1:] = num_images + 1
        for c in range(num_classes):
            w.write_idx(num_images + 1 + c, pack_record([starts[c], starts[c + 1]], b"", id=num_images + 1 + c))
    atomic_write(directory / "property", f"{num_classes},{image_size[1]},{image_size[0]}\n".encode())
    return directory


def read_insightface_recordio(directory: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """``(label, RGB image)`` in record order, read the way arcface_torch's ``MXFaceDataset`` reads them."""
    reader = RecordIOReader(Path(directory) / "train.rec", Path(directory) / "train.idx")
    flag, label, *_ = unpack_record(reader.read_idx(0))
    indices = range(1, int(label[0])) if flag > 0 else reader.keys
    for i in indices:
        _, lab, _, _, jpeg = unpack_record(reader.read_idx(i))
        yield int(lab if np.ndim(lab) == 0 else lab[0]), decode_jpeg(jpeg)
