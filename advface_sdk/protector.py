"""``Protector`` and ``protect()``: the public face of AdvFace."""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facecore.embeddings import read_npz
from facecore.errors import DataError, DeploymentKeyError, InvalidInputError, KeyMismatchError, NonFiniteError

from .artifact import ProtectorArtifact, load_artifact
from .backends import create_backend, resolve_backend
from .keys import DeploymentKey, _bucket_rotations_t32, _salted_rotation_t32, as_key, as_salt

DEFAULT_MODEL = "fr128"
_FLOATS = ("float16", "float32", "float64")
_NP_FLOATS = {np.dtype(name): name for name in _FLOATS}  # dtype.name costs ~2 µs a call; a dict lookup ~0.1 µs
#: largest batch protected at once on the host: extra memory is bounded by this many rows whatever the input size
DEFAULT_BATCH = 65536
#: the rotations of a call (per-user salts or a bucketed key's buckets): ``matrix(k)``, the k-th distinct matrix,
#: transposed (rows are multiplied by it; made on demand, so a call with many users holds few at once), and per
#: row the index of its matrix (``None``: the first for all rows)
RotationPlan = tuple[Callable[[int], np.ndarray], "np.ndarray | None"]


#: largest fresh_noise: noise as long as the template itself leaves little of it to match
MAX_FRESH_NOISE = 1.0


def default_fresh_noise(dim: int) -> float:
    """The fresh noise a bucketed gallery adds by default: ``0.15 · sqrt(dim / 128)`` (0.15 for 128-d, 0.30 for
    512-d templates), which moves the cosine between two stored templates by ~0.02 (std) whatever the width, for
    ~0.1 point of LFW accuracy (``benchmarks/results/threat_matrix/fresh_noise.md``)."""
    return round(0.15 * float(np.sqrt(dim / 128)), 4)


def check_fresh_noise(value) -> float:
    """``value`` as a relative fresh-noise size in ``[0, MAX_FRESH_NOISE]``; :class:`InvalidInputError` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(value) <= MAX_FRESH_NOISE:
        raise InvalidInputError(f"fresh_noise is a relative noise size in [0, {MAX_FRESH_NOISE}], got {value!r}")
    return float(value)


def _add_fresh_noise(y, size: float):
    """Rows ``y`` (numpy or torch) plus Gaussian noise of relative size ``size``, each row's norm kept.

    The noise comes from fresh OS entropy (``np.random.default_rng()``), never from numpy's or torch's global
    generators, which a caller may have seeded: a thief must not be able to draw it again."""
    n = np.random.default_rng().standard_normal(tuple(y.shape)).astype(np.float32)
    if _is_torch(y):
        import torch

        n = torch.from_numpy(n).to(device=y.device, dtype=y.dtype)
        length = torch.linalg.vector_norm(y, dim=1, keepdim=True)
        out = y + size * length * n / torch.linalg.vector_norm(n, dim=1, keepdim=True)
        return out * (length / torch.linalg.vector_norm(out, dim=1, keepdim=True))
    length = np.linalg.norm(y, axis=1, keepdims=True)
    out = y + size * length * n / np.linalg.norm(n, axis=1, keepdims=True)
    return (out * (length / np.linalg.norm(out, axis=1, keepdims=True))).astype(y.dtype, copy=False)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _require_device(device) -> str:
    if not isinstance(device, str) or not device:
        raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


class Protector:
    """Maps embeddings of one recognizer to adversarial embeddings to store instead.

    ``backend`` is ``"auto"`` (ONNX Runtime on CPU, torch on CUDA), or any name of
    :func:`advface_sdk.backends.list_backends`; ``device`` is ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
    (refused when there is no GPU). ``recognizer_fingerprint``, when given, must match the
    recognizer the artifact was trained for. ``trust`` / ``require_signature``: see
    :func:`~advface_sdk.artifact.load_artifact`. Every backend is checked against the weights'
    reference on a fixed probe set before its first use. Embeddings are protected in batches of
    ``batch_size`` rows, so extra memory is bounded by the batch, not the input.

    ``key`` (a key file from ``advface-cli keygen`` or a :class:`~advface_sdk.keys.DeploymentKey`)
    turns on the keyed mode: templates are rotated by the key's secret rotation, and probes must go
    through :meth:`prepare_probe` before cosine matching. ``key=None`` is plain AdvFace. With a key,
    ``salts=`` of :meth:`protect` / :meth:`prepare_probe` adds each user's secret rotation ``Q_u``
    (see :mod:`advface_sdk.keys`): a user's template and probe must be made with the same salt. A bucketed
    key (``buckets`` > 1) needs ``users=`` (the ids templates are stored under) to protect, and prepares a
    probe for every bucket unless told the claimed ``users``.
    """

    def __init__(self, model: str | Path | ProtectorArtifact = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu",
                 recognizer_fingerprint: str | None = None, batch_size: int = DEFAULT_BATCH, trust: tuple = (),
                 require_signature: bool | None = None, key: str | Path | DeploymentKey | None = None, **backend_options):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(backend, str):
            raise InvalidInputError(f"backend must be a name such as 'auto', 'onnxruntime' or 'torch', got {backend!r}")
        self.device = _require_device(device)
        self.artifact = model if isinstance(model, ProtectorArtifact) else load_artifact(model, trust, require_signature)
        self.artifact.check_recognizer(recognizer_fingerprint)
        self.key = None if key is None else as_key(key)
        self._rot_t = self._buckets_t = None
        if self.key is not None:
            self.key.check_protector(self.artifact.protector_id, f" ({self.artifact.directory.name})")
            self._rot_t = np.ascontiguousarray(self.key.rotation(self.dim).T, np.float32)
            self._buckets_t = _bucket_rotations_t32(self.key.secret, self.key.buckets, self.dim) if self.buckets > 1 else None
        self.batch_size = int(batch_size)
        self._options = backend_options
        self._backends: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self.backend_name = backend
        self._host_backend = ("torch" if device.startswith("cuda") else "onnxruntime") if backend == "auto" else backend
        self._check_options(self._host_backend)
        self._backend(self._host_backend, self.device)  # fail now, not on first call

    def _check_options(self, name: str) -> None:
        if not self._options:
            return
        params = inspect.signature(resolve_backend(name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        unknown = sorted(set(self._options) - set(params) - {"device"})
        if unknown:
            accepted = sorted(k for k in params if k not in ("self", "artifact", "device"))
            raise InvalidInputError(f"backend {name!r} takes no option(s) {unknown}; it accepts {accepted}")

    @property
    def dim(self) -> int:
        return self.artifact.dim

    @property
    def buckets(self) -> int:
        """Buckets of the deployment key (1: unkeyed or a plain key, one rotation for every template)."""
        return 1 if self.key is None else self.key.buckets

    @property
    def key_id(self) -> str | None:
        """Id of the deployment key (``None``: unkeyed); stored with templates and probes to catch mix-ups."""
        return None if self.key is None else self.key.key_id

    def backend(self, name: str | None = None, device: str | None = None):
        """The backend instance ``name`` on ``device`` (default: the host backend and device), created and
        checked against the weights' reference on first use."""
        return self._backend(name or self._host_backend, _require_device(device or self.device))

    def _backend(self, name: str, device: str):
        key = (name, device)
        backend = self._backends.get(key)
        if backend is None:
            with self._lock:
                backend = self._backends.get(key)
                if backend is None:
                    backend = create_backend(name, self.artifact, device=device, **self._options)
                    fp16 = self._options.get("precision") == "fp16"
                    run = backend.run if hasattr(backend, "run") else None
                    if run is not None:
                        self.artifact.check_backend(f"{name} on {device}", run, 2e-2 if fp16 else 1e-4)
                    self._backends[key] = backend
        return backend

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
    def _check_values(x: np.ndarray, offset: int = 0) -> None:
        """NaN/Inf and zero rows; ``offset`` is added to the row numbers reported (chunked callers)."""
        if np.isfinite(x).all() and x.any(axis=1).all():  # fast path; the checks below name the bad rows
            return
        if not np.isfinite(x).all():
            bad = (np.flatnonzero(~np.isfinite(x).all(axis=1))[:5] + offset).tolist()
            raise NonFiniteError(f"embeddings contain NaN or Inf (rows {bad}); nothing was protected")
        zero = np.flatnonzero(~np.any(x, axis=1))
        if zero.size:
            raise InvalidInputError(f"zero embeddings cannot be protected (rows {(zero[:5] + offset).tolist()}); "
                                    "check the recognizer output")

    def __call__(self, embeddings, salts=None, users=None, fresh_noise: float = 0.0):
        return self.protect(embeddings, salts, users, fresh_noise)

    def protect(self, embeddings, salts=None, users=None, fresh_noise: float = 0.0):
        """Protected embeddings of the same kind (numpy / torch), device, shape and dtype.

        ``salts`` (keyed mode only): one user salt (16 bytes or 32 hex digits) for every row, or a
        sequence of one salt per row; ``None`` is the deployment-wide keyed (or plain) protection.
        ``users`` (keyed mode; required by a bucketed key): the id each row is stored under (one string
        for every row, or one per row); each row is rotated by its id's bucket rotation.
        ``fresh_noise`` (keyed mode): relative size ``b`` of Gaussian noise drawn afresh for every row and
        kept nowhere, added to the AdvFace template before the key (norm kept). It blurs the cosines between
        stored templates, which a key of rotations keeps exactly, so that a thief holding the very images
        enrolled cannot find their templates by those cosines (README, column (c)); the output is then no
        longer a function of the input. :func:`default_fresh_noise` is what a bucketed gallery uses.
        """
        noise = self._check_noise(fresh_noise)
        if _is_torch(embeddings):
            return self._protect_torch(embeddings, salts, users, noise)
        rows_fn = self._protect_rows if not noise else functools.partial(self._protect_rows, noise=noise)
        return self._map_numpy(embeddings, rows_fn, salts, users)

    def _check_noise(self, fresh_noise) -> float:
        fresh_noise = check_fresh_noise(fresh_noise)
        if fresh_noise and self.key is None:
            raise DeploymentKeyError("fresh_noise blurs the cosines a deployment key keeps: it needs a keyed protector "
                                     "(Protector(model, key=KEYFILE)); unkeyed templates stay exactly AdvFace's")
        return fresh_noise

    def prepare_probe(self, embeddings, salts=None, users=None):
        """Clean probe embeddings mapped into the key's space: match them by cosine against stored templates.

        Same kind, shape and dtype as the input; without a key the probes are returned unchanged (a copy).
        ``salts``: the claimed user's salt(s), as for :meth:`protect`. A bucketed key prepares each probe
        for the bucket of the claimed ``users`` (1:1), or, without ``users``, for every bucket (1:N): the
        output then has shape ``(..., buckets, D)``, row ``b`` to be matched against bucket ``b``'s
        templates only (:class:`~advface_sdk.gallery.Gallery` searches that way).
        """
        if _is_torch(embeddings):
            import torch

            self._check(embeddings, str(embeddings.dtype).replace("torch.", ""), tuple(embeddings.shape))
            out = self.prepare_probe(embeddings.detach().cpu().numpy(), salts, users)
            return torch.from_numpy(out).to(embeddings.device)
        if self.buckets > 1 and salts is None and users is None:
            return self._probe_every_bucket(embeddings)
        return self._map_numpy(embeddings, self._probe_rows, salts, users)

    def _probe_every_bucket(self, embeddings) -> np.ndarray:
        """``(..., K, D)``: each probe prepared for each of the key's K buckets (batches of batch_size / K rows)."""
        embeddings = self._checked_numpy(embeddings)
        flat, k = embeddings.reshape(-1, self.dim), self.buckets
        out = np.empty((len(flat), k * self.dim), embeddings.dtype)
        step = max(1, self.batch_size // k)
        for start in range(0, len(flat), step):
            x = flat[start:start + step]
            self._check_values(x, start)
            unit, norm = self._unit(x)
            every = self._every_bucket(unit).reshape(len(x), k * self.dim)
            out[start:start + step] = self._rescale(every, norm, x.dtype, start)
        return out.reshape(embeddings.shape[:-1] + (k, self.dim))

    def _every_bucket(self, unit: np.ndarray) -> np.ndarray:
        """Unit float32 rows ``(n, d)`` prepared for every bucket: ``(n, K, d)``, still unit (rotations keep norms)."""
        return (unit @ self._buckets_t).reshape(len(unit), self.buckets, self.dim)

    def _plan(self, salts, users, rows: int | None = None, probe: bool = False) -> RotationPlan | None:
        """Checked ``salts`` or ``users`` for ``rows`` rows (``None``: a single salt or id only); ``None``: the key's
        one rotation (or none). A bucketed key refuses to protect without ``users``."""
        if salts is not None and users is not None:
            raise InvalidInputError("salts (1:1, a rotation per user) and users (a bucketed key's buckets) are two "
                                    "modes: pass one of them")
        if users is not None:
            return self._bucket_plan(users, rows)
        if salts is None:
            if self.buckets > 1 and not probe:
                raise InvalidInputError(f"deployment key {self.key_id} spreads templates over {self.buckets} buckets: "
                                        "pass users= (the id each template is stored under), or enroll through a Gallery")
            return None
        if self.key is None:
            raise DeploymentKeyError("salts need a deployment key: make the protector with key=KEYFILE "
                                     "(advface-cli keygen), e.g. Protector(model, key='deploy.key')")
        secret, dim = self.key.secret, self.dim
        if isinstance(salts, (bytes, bytearray, memoryview, str)):
            salt = as_salt(salts)
            return lambda k: _salted_rotation_t32(secret, salt, dim), None
        if rows is None:
            raise InvalidInputError(f"pass a single salt (16 bytes or 32 hex digits), got {type(salts).__name__}")
        try:
            parsed = [as_salt(s) for s in salts]
        except TypeError:
            raise InvalidInputError(f"salts must be one salt or a sequence of salts, got {type(salts).__name__}") from None
        if len(parsed) != rows:
            raise InvalidInputError(f"got {len(parsed)} salts for {rows} embeddings: pass one salt per row, "
                                    "or a single salt for all rows")
        distinct = list(dict.fromkeys(parsed))
        index = {s: i for i, s in enumerate(distinct)}
        return (lambda k: _salted_rotation_t32(secret, distinct[k], dim)), np.fromiter((index[s] for s in parsed), np.intp, rows)

    def _bucket_plan(self, users, rows: int | None) -> RotationPlan:
        if self.key is None:
            raise DeploymentKeyError("users= picks a deployment key's bucket: make the protector with key=KEYFILE "
                                     "(advface-cli keygen --buckets K)")
        single = isinstance(users, str)
        if not single and rows is None:
            raise InvalidInputError(f"pass a single user id (a string), got {type(users).__name__}")
        buckets = self.key.bucket(users)
        if not single and len(buckets) != rows:
            raise InvalidInputError(f"got {len(buckets)} user ids for {rows} embeddings: pass one id per row, "
                                    "or a single id for all rows")
        if self.buckets == 1:
            return lambda k: self._rot_t, None
        distinct, index = np.unique(buckets, return_inverse=True)
        d, stack = self.dim, self._buckets_t

        def matrix(k: int) -> np.ndarray:  # a column block of the side-by-side stack: a view, no copy
            return stack[:, int(distinct[k]) * d:(int(distinct[k]) + 1) * d]

        return matrix, None if single else index.astype(np.intp)

    def _checked_numpy(self, embeddings) -> np.ndarray:
        """``embeddings`` as a plain ndarray after the type, dtype and shape checks (no np.matrix, no masked entries)."""
        if not isinstance(embeddings, np.ndarray):
            raise InvalidInputError(f"embeddings must be a numpy array or torch tensor, got {type(embeddings).__name__}")
        if isinstance(embeddings, np.matrix):
            raise InvalidInputError("embeddings must be a plain numpy array, got np.matrix: pass np.asarray(embeddings)")
        if isinstance(embeddings, np.ma.MaskedArray):
            if np.ma.getmaskarray(embeddings).any():
                raise InvalidInputError("embeddings have masked entries, which have no value to protect: drop those rows")
            embeddings = embeddings.data
        self._check(embeddings, _NP_FLOATS.get(embeddings.dtype) or embeddings.dtype.name, embeddings.shape)
        return embeddings

    def _map_numpy(self, embeddings, rows_fn, salts=None, users=None):
        embeddings = self._checked_numpy(embeddings)
        flat = embeddings.reshape(-1, self.dim)
        plan = self._plan(salts, users, len(flat), probe=rows_fn == self._probe_rows)
        out = np.empty(flat.shape, embeddings.dtype)
        for start in range(0, len(flat), self.batch_size):
            out[start:start + self.batch_size] = rows_fn(flat[start:start + self.batch_size], start, plan)
        return out.reshape(embeddings.shape)

    def _rotate(self, y, plan: RotationPlan, offset: int):
        """Rows ``y`` (numpy or torch; rows ``offset``... of the call) times their row's matrix in ``plan``."""
        if _is_torch(y):
            import torch

            def to_y(a: np.ndarray):
                return torch.tensor(a, device=y.device)
        else:
            def to_y(a: np.ndarray):
                return a
        matrix, index = plan

        def rot(k: int):
            return to_y(matrix(k))

        if index is None:
            return y @ rot(0)
        sel = index[offset:offset + len(y)]
        out = y.new_empty(y.shape) if _is_torch(y) else np.empty_like(y)
        for k in np.unique(sel):
            rows = to_y(np.flatnonzero(sel == k))
            out[rows] = y[rows] @ rot(int(k))
        return out

    @staticmethod
    def _unit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 unit rows and float64 norms, without overflow even at |x| ~ 1e300."""
        x64 = x.astype(np.float64)
        scale = np.abs(x64).max(axis=1, keepdims=True)
        norm = np.sqrt(((x64 / scale) ** 2).sum(axis=1, keepdims=True)) * scale
        return (x64 / norm).astype(np.float32), norm

    def _probe_rows(self, x: np.ndarray, offset: int = 0, plan: RotationPlan | None = None) -> np.ndarray:
        self._check_values(x, offset)
        if self._rot_t is None:
            return x.copy()
        unit, norm = self._unit(x)
        return self._rescale(unit @ self._rot_t if plan is None else self._rotate(unit, plan, offset), norm, x.dtype, offset)

    def _protect_rows(self, x: np.ndarray, offset: int = 0, plan: RotationPlan | None = None,
                      noise: float = 0.0) -> np.ndarray:
        """One batch: checked, run on unit vectors (no overflow), rescaled in float64, cast back; never non-finite."""
        self._check_values(x, offset)
        unit, norm = self._unit(x)
        y = self._backend(self._host_backend, self.device).run(unit)
        if noise:
            y = _add_fresh_noise(y, noise)
        if plan is not None:
            y = self._rotate(y, plan, offset)
        elif self._rot_t is not None:
            y = y @ self._rot_t
        return self._rescale(y, norm, x.dtype, offset)

    @staticmethod
    def _rescale(y: np.ndarray, norm: np.ndarray, dtype, offset: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        with np.errstate(over="ignore"):  # overflow is reported below, naming the rows
            out = (y.astype(np.float64) * norm).astype(dtype)
        if not np.isfinite(out).all():
            bad = (np.flatnonzero(~np.isfinite(out).all(axis=1))[:5] + offset).tolist()
            raise NonFiniteError(f"protected embeddings of rows {bad} overflow {dtype}: their norms are too large for the "
                                 "dtype; normalise the embeddings first (cosine matching ignores the norm) or pass float32/float64")
        return out

    def load_keyed(self, path: str | Path, kind: str = "templates") -> np.ndarray:
        """The ``embeddings`` of an ``.npz`` written by ``advface-cli protect`` / ``prepare-probe``, after checking that
        they are ``kind`` (``"templates"`` or ``"probes"``) made by this protector with this key."""
        path = Path(path)
        if kind not in ("templates", "probes"):
            raise InvalidInputError(f"kind must be 'templates' or 'probes', got {kind!r}")
        with read_npz(path) as data:
            meta = {k: str(data[k].item()) if k in data.files and data[k].size == 1 else None
                    for k in ("kind", "key_id", "protector_id")}
            emb = data["embeddings"] if "embeddings" in data.files else None
        if emb is None or meta["kind"] is None:
            raise DataError(f"{path} holds no {kind} written by advface-cli (members 'embeddings' and 'kind' expected)")
        if meta["kind"] != kind:
            raise InvalidInputError(f"{path} holds {meta['kind']}, not {kind}")
        if meta["protector_id"] != self.artifact.protector_id:
            raise KeyMismatchError(f"{path} was made by protector {meta['protector_id']}, not {self.artifact.protector_id}")
        if meta["key_id"] != self.key_id:
            raise KeyMismatchError(f"{path} was made with deployment key {meta['key_id']}, not {self.key_id}: "
                                   "templates and probes of different keys never match")
        return emb

    def _protect_torch(self, t, salts=None, users=None, noise: float = 0.0):
        import torch

        if t.layout != torch.strided or t.device.type == "meta":
            raise InvalidInputError(f"embeddings must be a dense tensor with data (got layout {t.layout}, device "
                                    f"{t.device.type}); call .to_dense() or materialise it first")
        self._check(t, str(t.dtype).replace("torch.", ""), tuple(t.shape))
        plan = self._plan(salts, users, int(np.prod(t.shape[:-1], dtype=np.int64)))
        name = self.backend_name
        if name == "auto":
            name = "torch" if t.is_cuda else self._host_backend
        device = str(t.device) if (t.is_cuda and self.backend_name == "auto") else self.device
        backend = self._backend(name, device)
        flat = t.detach().reshape(-1, self.dim)
        if not (hasattr(backend, "run_torch") and (t.is_cuda or name == "torch")):
            return torch.from_numpy(self.protect(flat.cpu().numpy(), salts, users, noise)).to(t.device).reshape(t.shape)
        out = torch.empty_like(flat)
        for start in range(0, len(flat), self.batch_size):
            x = flat[start:start + self.batch_size].to(torch.float64)
            if not bool(torch.isfinite(x).all() & x.any(dim=1).all()):  # one device sync on the happy path
                self._check_values(x.cpu().numpy(), start)
            scale = x.abs().amax(dim=1, keepdim=True)
            norm = torch.sqrt(((x / scale) ** 2).sum(dim=1, keepdim=True)) * scale
            y = backend.run_torch((x / norm).to(torch.float32))
            if noise:
                y = _add_fresh_noise(y, noise)
            if plan is not None:
                y = self._rotate(y, plan, start)
            elif self._rot_t is not None:
                y = y @ torch.from_numpy(self._rot_t).to(y.device)
            y = y.to(torch.float64) * norm
            out[start:start + self.batch_size] = y.to(t.dtype)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError(f"protected embeddings overflow {t.dtype}: normalise the embeddings first or pass float32")
        return out.reshape(t.shape)


_CACHE: dict[tuple, Protector] = {}
_CACHE_LOCK = threading.Lock()


def _cached(model, backend: str, device: str, key) -> Protector:
    if isinstance(model, Protector):
        if key is not None and as_key(key).key_id != model.key_id:
            raise KeyMismatchError(f"key {as_key(key).key_id} differs from the protector's key {model.key_id}")
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidInputError(f"model must be an artifact name, a folder or a Protector, got {type(model).__name__}")
    deployment_key = None if key is None else as_key(key)
    cache_key = (str(model), backend, device, None if deployment_key is None else deployment_key.key_id)
    protector = _CACHE.get(cache_key)
    if protector is None:
        with _CACHE_LOCK:
            protector = _CACHE.get(cache_key)
            if protector is None:
                protector = _CACHE[cache_key] = Protector(model, backend=backend, device=device, key=deployment_key)
    return protector


def protect(embeddings, model: str | Path | Protector = DEFAULT_MODEL, backend: str = "auto", device: str = "cpu",
            key: str | Path | DeploymentKey | None = None, salts=None, users=None, fresh_noise: float = 0.0):
    """Protect embeddings with a (cached, built once even under concurrent first calls) :class:`Protector`;
    ``key``: a deployment key file or :class:`~advface_sdk.keys.DeploymentKey` (keyed mode); ``salts``: per-user
    salts; ``users``: the ids templates are stored under (bucketed keys); ``fresh_noise``: see
    :meth:`Protector.protect`."""
    return _cached(model, backend, device, key).protect(embeddings, salts, users, fresh_noise)


def prepare_probe(embeddings, model: str | Path | Protector = DEFAULT_MODEL, key: str | Path | DeploymentKey | None = None,
                  backend: str = "auto", device: str = "cpu", salts=None, users=None):
    """Clean probes mapped into ``key``'s space, with the claimed user's ``salts`` or ``users`` (see
    :meth:`Protector.prepare_probe`)."""
    return _cached(model, backend, device, key).prepare_probe(embeddings, salts, users)
