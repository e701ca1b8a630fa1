"""The one small interface every recognizer adapter implements, and the base of file-backed ones."""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import sha256_file
from ..errors import InvalidInputError, ModelLoadError, NonFiniteError
from ..images import as_image_batch


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
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):
                raise InvalidInputError(f"{key} must be a finite number, got {value!r}")
            object.__setattr__(self, key, value.item() if isinstance(value, np.generic) else value)  # JSON-able
        if not self.std > 0:
            raise InvalidInputError(f"std must be positive, got {self.std}")
        size = self.input_size
        if isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2 \
                or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v >= 1
                           and float(v).is_integer() for v in size):
            raise InvalidInputError(f"input_size must be two positive integers (width, height), got {size!r}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in size))

    def apply(self, batch_bgr: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, 3)`` BGR → float32 ``(N, 3, H, W)`` network input."""
        x = batch_bgr[..., ::-1] if self.channel_order == "RGB" else batch_bgr
        x = (x.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


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


class FileRecognizer(Recognizer):
    """A recognizer backed by one model file with explicit preprocessing.

    Subclasses load their runtime, call ``super().__init__`` and implement :meth:`infer` (aligned
    crops → raw outputs); the base gives ``dim``, ``preprocessing``, ``fingerprint`` (model bytes +
    preprocessing), batched ``embed`` with output checks, and ``to_torch`` (the ONNX graph in torch).
    ``fixed_batch`` (a model's static batch size, else ``None``) pads chunks; ``batch_size`` sizes the others.
    """

    def __init__(self, model_path: str | Path, preprocessing: Preprocessing, name: str, model_sha256: str | None = None,
                 fixed_batch: int | None = None, batch_size: int = 64):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelLoadError(f"recognizer model not found: {self.model_path}")
        self._pre = preprocessing
        self.name = name
        self._sha = model_sha256 or sha256_file(self.model_path)
        self.fixed_batch = fixed_batch
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self._dim: int | None = None

    def set_dim(self, static: object) -> None:
        """The embedding width: ``static`` when the model declares it (an int), else measured on a blank batch."""
        if isinstance(static, int):
            self._dim = int(static)
        else:
            w, h = self._pre.input_size
            n = self.fixed_batch or 1
            self._dim = int(self.infer(np.zeros((n, h, w, 3), np.uint8)).reshape(n, -1).shape[-1])

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self._pre

    @property
    def fingerprint(self) -> str:
        return make_fingerprint(self._sha, self._pre)

    @abstractmethod
    def infer(self, crops: np.ndarray) -> np.ndarray:
        """Raw outputs ``(N, D)`` for a chunk of aligned uint8 BGR crops ``(N, H, W, 3)`` (preprocessing is the subclass's)."""

    def embed(self, aligned_images) -> np.ndarray:
        batch = as_image_batch(aligned_images, self._pre.input_size)
        return self._embed_in_batches(batch, self.infer, self.fixed_batch, self.batch_size)

    def to_torch(self, trainable: bool = False):
        """A differentiable torch copy of the ONNX graph, frozen unless ``trainable``."""
        from .torch_graph import DifferentiableRecognizer, load_onnx_as_torch

        module = DifferentiableRecognizer(load_onnx_as_torch(self.model_path, trainable=trainable), self._pre)
        return module if trainable else module.eval().requires_grad_(False)
