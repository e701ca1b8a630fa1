"""The one small interface every recognizer adapter implements."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, ModelLoadError, NonFiniteError


@dataclass(frozen=True)
class Preprocessing:
    """How an aligned BGR uint8 crop becomes the network input: ``(x[channel_order] - mean) / std``, NCHW."""

    channel_order: str = "RGB"
    mean: float = 127.5
    std: float = 128.0
    input_size: tuple[int, int] = (112, 112)  # (width, height)

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise InvalidInputError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if not self.std > 0:
            raise InvalidInputError(f"std must be positive, got {self.std}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))

    def apply(self, batch_bgr: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, 3)`` BGR → float32 ``(N, 3, H, W)`` network input."""
        x = batch_bgr[..., ::-1] if self.channel_order == "RGB" else batch_bgr
        x = (x.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_fingerprint(model_sha256: str, preprocessing: Preprocessing, extra: dict | None = None) -> str:
    """Stable id of (model bytes, preprocessing): two recognizers agree iff their fingerprints do."""
    payload = {"model": model_sha256, "pre": preprocessing.to_dict(), **(extra or {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class Recognizer(ABC):
    """Maps aligned face crops (uint8 BGR ``(N, H, W, 3)``) to float32 embeddings ``(N, dim)``."""

    name: str = "recognizer"

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Stable hex id of the model file and its preprocessing."""

    @property
    @abstractmethod
    def preprocessing(self) -> Preprocessing:
        """The explicit preprocessing applied before the network."""

    @abstractmethod
    def embed(self, aligned_images) -> np.ndarray:
        """Embed aligned crops; returns float32 ``(N, dim)`` (not normalised)."""

    def _embed_in_batches(self, batch: np.ndarray, run, fixed_batch: int | None, step: int) -> np.ndarray:
        """Run ``run`` over preprocessed chunks: fixed-batch models get padded chunks of their size."""
        size = fixed_batch or step
        outs = []
        for start in range(0, len(batch), size):
            chunk = batch[start:start + size]
            n = len(chunk)
            if fixed_batch and n != fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(run(chunk)[:n])
        emb = np.concatenate(outs)
        if emb.ndim != 2 or emb.shape[0] != len(batch) or emb.shape[1] != self.dim or not np.issubdtype(emb.dtype, np.number):
            raise ModelLoadError(f"recognizer {self.name} returned {emb.dtype} {emb.shape}, not embeddings "
                                 f"({len(batch)}, {self.dim}): is it a face recognizer?")
        emb = emb.astype(np.float32, copy=False)
        if not np.isfinite(emb).all():
            raise NonFiniteError(f"recognizer {self.name} produced NaN/Inf embeddings; check the model and preprocessing")
        zero = np.flatnonzero(~emb.any(axis=1))
        if zero.size:
            raise ModelLoadError(f"recognizer {self.name} produced all-zero embeddings for {zero.size} of {len(emb)} images "
                                 f"(rows {zero[:5].tolist()}): the model or its preprocessing is broken; nothing was written")
        return emb

    def to_torch(self):
        """A differentiable torch copy taking RGB float images in [0, 1], ``(N, 3, H, W)``."""
        raise NotImplementedError(f"{type(self).__name__} has no differentiable torch copy")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, fingerprint={self.fingerprint})"
