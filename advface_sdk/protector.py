"""``Protector`` and ``protect()``: the public face of AdvFace."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facecore.errors import InvalidInputError, NonFiniteError

from .artifact import ProtectorArtifact, load_artifact
from .backends import create_backend

DEFAULT_MODEL = "fr128"
_FLOATS = ("float16", "float32", "float64")
_NP_FLOATS = {np.dtype(name): name for name in _FLOATS}  # dtype.name costs ~2 µs a call; a dict lookup ~0.1 µs


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class Protector:
    """Maps embeddings of one recognizer to adversarial embeddings to store instead.

    ``backend`` is ``"auto"`` (ONNX Runtime on CPU inputs, torch on CUDA tensors), or any name of
    :func:`advface_sdk.backends.list_backends`; ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ``recognizer_fingerprint``, when given, must match the recognizer the artifact was trained for.
    """

    def __init__(self, model: str | Path | ProtectorArtifact = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu",
                 recognizer_fingerprint: str | None = None, batch_size: int = 65536, **backend_options):
        self.artifact = model if isinstance(model, ProtectorArtifact) else load_artifact(model)
        self.artifact.check_recognizer(recognizer_fingerprint)
        if batch_size <= 0:
            raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = device
        self._options = backend_options
        self._backends: dict[tuple[str, str], object] = {}
        self.backend_name = backend
        if backend != "auto":
            self._backend(backend, device)  # fail now, not on first call

    @property
    def dim(self) -> int:
        return self.artifact.dim

    def _backend(self, name: str, device: str):
        key = (name, device)
        if key not in self._backends:
            self._backends[key] = create_backend(name, self.artifact, device=device, **self._options)
        return self._backends[key]

    def _check(self, x, dtype_name: str, shape: tuple) -> None:
        if dtype_name not in _FLOATS:
            raise InvalidInputError(f"embeddings must be float16, float32 or float64, got {dtype_name}")
        if len(shape) not in (1, 2):
            raise InvalidInputError(f"embeddings must have shape (D,) or (N, D), got {tuple(shape)}")
        if shape[-1] != self.dim:
            raise InvalidInputError(
                f"embeddings have dimension {shape[-1]} but this protector ({self.artifact.directory.name}) was trained "
                f"for {self.dim}-d embeddings of {self.artifact.config.get('recognizer', {}).get('name')}"
            )
        if len(shape) == 2 and shape[0] == 0:
            raise InvalidInputError("empty batch: pass at least one embedding")

    @staticmethod
    def _check_values(x32: np.ndarray) -> None:
        if np.isfinite(x32).all() and x32.any(axis=1).all():  # fast path; the checks below name the bad rows
            return
        if not np.isfinite(x32).all():
            bad = np.flatnonzero(~np.isfinite(x32).all(axis=1))[:5].tolist()
            raise NonFiniteError(f"embeddings contain NaN or Inf (rows {bad}); nothing was protected")
        zero = np.flatnonzero(~np.any(x32, axis=1))
        if zero.size:
            raise InvalidInputError(f"zero embeddings cannot be protected (rows {zero[:5].tolist()}); check the recognizer output")

    def __call__(self, embeddings):
        return self.protect(embeddings)

    def protect(self, embeddings):
        """Protected embeddings of the same kind (numpy / torch), device, shape and dtype."""
        if _is_torch(embeddings):
            return self._protect_torch(embeddings)
        if not isinstance(embeddings, np.ndarray):
            raise InvalidInputError(f"embeddings must be a numpy array or torch tensor, got {type(embeddings).__name__}")
        self._check(embeddings, _NP_FLOATS.get(embeddings.dtype) or embeddings.dtype.name, embeddings.shape)
        x = np.ascontiguousarray(embeddings.reshape(-1, self.dim), dtype=np.float32)
        self._check_values(x)
        name = "onnxruntime" if self.backend_name == "auto" else self.backend_name
        out = self._run(self._backend(name, self.device if self.backend_name != "auto" else "cpu"), x)
        return out.reshape(embeddings.shape).astype(embeddings.dtype, copy=False)

    def _run(self, backend, x: np.ndarray) -> np.ndarray:
        if len(x) <= self.batch_size:
            return backend.run(x)
        return np.concatenate([backend.run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def _protect_torch(self, t):
        import torch

        self._check(t, str(t.dtype).replace("torch.", ""), tuple(t.shape))
        flat = t.reshape(-1, self.dim).to(torch.float32)
        if not bool(torch.isfinite(flat).all() & flat.any(dim=1).all()):  # one device sync on the happy path
            self._check_values(flat.detach().cpu().numpy())
        name = self.backend_name
        if name == "auto":
            name = "torch" if t.is_cuda else "onnxruntime"
        device = str(t.device) if (t.is_cuda and self.backend_name == "auto") else (self.device if self.backend_name != "auto" else "cpu")
        backend = self._backend(name, device)
        if hasattr(backend, "run_torch") and (t.is_cuda or name == "torch"):
            out = torch.cat([backend.run_torch(flat[i:i + self.batch_size]) for i in range(0, len(flat), self.batch_size)])
        else:
            out = torch.from_numpy(self._run(backend, flat.detach().cpu().numpy()))
        return out.to(device=t.device, dtype=t.dtype).reshape(t.shape)


_CACHE: dict[tuple, Protector] = {}


def protect(embeddings, model: str | Path | Protector = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu"):
    """Protect embeddings with a (cached) :class:`Protector`; see its docstring."""
    if isinstance(model, Protector):
        return model.protect(embeddings)
    key = (str(model), backend, device)
    if key not in _CACHE:
        _CACHE[key] = Protector(model, backend=backend, device=device)
    return _CACHE[key].protect(embeddings)
