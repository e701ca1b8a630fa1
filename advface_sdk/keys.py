"""Deployment keys: a secret kept away from the template store that hides AdvFace templates from decoders.

A key is 32 random bytes bound to one protector artifact. It defines a secret orthogonal rotation
``R`` of the embedding space; a keyed protector stores ``R · advface(z)`` and prepares clean probes
as ``R · z``, so the match score is still the cosine between a stored template and a prepared probe
(rotations preserve cosines: accuracy is exactly AdvFace's), while a thief without the key holds
templates in a space no public decoder or recognizer was trained on. A rotation keeps the cosines
*between* stored templates too: a thief with photos of people in the store can match the two sets'
similarity structures and link some of them (README, "What protection you get", column (c)); per-user
salts (below) leave no shared structure.

The key file is JSON (``format``, ``secret``, ``protector``, ``key_id``), written with mode 0600 and
never over an existing file; ``key_id`` (16 hex digits) is a fingerprint of the secret and the bound
protector, so a truncated, edited or foreign file is refused on load.

Bucketed keys (1:N stores): ``buckets=K`` spreads the stored ids over ``K`` keyed buckets,
``bucket(id) = HMAC-SHA256(secret, id) mod K``, each with its own secret rotation ``R_b``: a template
stored under ``id`` is ``R_bucket(id) · advface(z)``. Cosines across buckets mean nothing, so a thief
who aligns the stolen store to public embeddings must align ``K`` small sets instead of one large one
(README, column (c): on LFW-sized stores K = 64 leaves the alignment attack at chance). A 1:N probe is
prepared once per bucket (``(K, d)`` per probe) and each bucket searched in its own partition of the
store (:class:`~advface_sdk.gallery.Gallery` does this), so accuracy is exactly AdvFace's. A rotation keeps
every cosine inside a bucket, and a thief holding the very images enrolled computes their AdvFace templates
exactly; a bucketed ``Gallery`` therefore adds fresh noise to each template it enrolls
(``Protector.protect(..., fresh_noise=)``), which blurs those cosines for ~0.1 point of LFW accuracy. ``K`` is part
of the key: it is written in the key file (format ``advface-deployment-key/2``, which older readers
refuse) and enters ``key_id``; a plain key (``K = 1``) is written and identified exactly as before.

Per-user salts (1:1 verification against a claimed identity): each user holds a random 16-byte salt
(:func:`new_salt`, on a card or in an app, never stored with the templates). The user's template is
``Q_u · R · advface(z)`` and their probe ``Q_u · R · z``, where ``Q_u`` is a Haar rotation seeded by
HMAC-SHA256(key secret, salt): neither the key nor the salt alone gives ``Q_u``, cosines are unchanged,
and a thief holding the store and the key but not a user's salt faces a uniformly random rotation for
that user. Salts are per request, so they stay outside exported ONNX graphs: apply ``Q_u`` (or
:meth:`DeploymentKey.salted_rotation`, ``Q_u · R``, to the unkeyed graph's output) after the graph.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from facecore.errors import DeploymentKeyError, InvalidInputError, KeyMismatchError

KEY_FORMAT = "advface-deployment-key/1"
#: format of bucketed keys (``buckets`` > 1); plain keys keep :data:`KEY_FORMAT` so older readers still read them
BUCKETED_KEY_FORMAT = "advface-deployment-key/2"
#: most buckets a key may have: the protector keeps every bucket's rotation in memory (K · 4 · d² bytes)
MAX_BUCKETS = 256
SECRET_BYTES = 32
SALT_BYTES = 16
MAX_KEY_FILE = 4096


def _key_id(secret: bytes, protector_id: str, buckets: int = 1) -> str:
    if buckets == 1:
        return hashlib.sha256(KEY_FORMAT.encode() + b"\0" + secret + protector_id.encode()).hexdigest()[:16]
    return hashlib.sha256(BUCKETED_KEY_FORMAT.encode() + b"\0" + secret + protector_id.encode() + b"\0"
                          + buckets.to_bytes(4, "big")).hexdigest()[:16]


def random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A Haar-distributed ``(dim, dim)`` orthogonal matrix drawn with ``rng`` (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q *= np.sign(np.diag(r))
    return q


def _haar(seed: bytes, dim: int) -> np.ndarray:
    return random_rotation(np.random.default_rng(int.from_bytes(seed, "big")), dim)


@lru_cache(maxsize=16)
def _rotation(secret: bytes, dim: int) -> np.ndarray:
    q = _haar(hashlib.sha256(b"advface-rotation\0" + secret + dim.to_bytes(4, "big")).digest(), dim)
    q.setflags(write=False)
    return q


def _salted_rotation(secret: bytes, salt: bytes, dim: int) -> np.ndarray:
    """``Q_u · R`` (float64, read-only), ``Q_u`` seeded by HMAC-SHA256(secret, salt); not cached (only the
    float32 form protectors use is, so a cached user costs 4·d² bytes, not 12·d²)."""
    seed = hmac.new(secret, b"advface-user-rotation\0" + salt + dim.to_bytes(4, "big"), hashlib.sha256).digest()
    m = _haar(seed, dim) @ _rotation(secret, dim)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=64)
def _salted_rotation_t32(secret: bytes, salt: bytes, dim: int) -> np.ndarray:
    """``(Q_u · R)ᵀ`` as contiguous float32, the form protectors multiply rows by (cached: no per-call copy)."""
    m = np.ascontiguousarray(_salted_rotation(secret, salt, dim).T, np.float32)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=4)
def _bucket_rotations_t32(secret: bytes, buckets: int, dim: int) -> np.ndarray:
    """``(dim, K·dim)`` float32: the transposed bucket rotations side by side, columns ``b·dim:(b+1)·dim`` = ``R_bᵀ``.
    ``v @ M`` prepares rows for every bucket in one product (8× faster than K batched ones); a column block is
    one bucket's matrix, multiplied as a view. Read-only, cached (K · 4 · d² bytes)."""
    out = np.empty((dim, buckets * dim), np.float32)
    for b in range(buckets):
        seed = hmac.new(secret, b"advface-bucket-rotation\0" + b.to_bytes(4, "big") + dim.to_bytes(4, "big"),
                        hashlib.sha256).digest()
        out[:, b * dim:(b + 1) * dim] = _haar(seed, dim).T
    out.setflags(write=False)
    return out


def _check_buckets(buckets) -> int:
    if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)) or not 1 <= buckets <= MAX_BUCKETS:
        raise DeploymentKeyError(f"buckets must be an integer in [1, {MAX_BUCKETS}], got {buckets!r}")
    return int(buckets)


def new_salt() -> bytes:
    """A fresh random user salt (16 bytes from ``os.urandom``); ``.hex()`` is its text form."""
    return os.urandom(SALT_BYTES)


def as_salt(salt: "bytes | str") -> bytes:
    """A salt from its 16 bytes or its 32-hex-digit text form; :class:`InvalidInputError` otherwise."""
    if isinstance(salt, str):
        text = salt.strip()
        try:
            salt = bytes.fromhex(text)
        except ValueError:
            raise InvalidInputError(f"a salt in text form is {2 * SALT_BYTES} hex digits (advface-cli salt), "
                                    f"got {len(text)} characters that are not all hex") from None
    elif isinstance(salt, (bytearray, memoryview)):
        salt = bytes(salt)
    elif not isinstance(salt, bytes):
        raise InvalidInputError(f"a salt is {SALT_BYTES} bytes or {2 * SALT_BYTES} hex digits, got {type(salt).__name__}")
    if len(salt) != SALT_BYTES:
        raise InvalidInputError(f"a salt is {SALT_BYTES} bytes ({2 * SALT_BYTES} hex digits), got {len(salt)} bytes: "
                                "pass the user's salt exactly as advface_sdk.keys.new_salt() / advface-cli salt made it")
    return bytes(salt)


@dataclass(frozen=True, repr=False)
class DeploymentKey:
    """A deployment secret bound to the protector with id ``protector_id``, spreading stored ids over ``buckets``
    keyed buckets (1: one rotation for the whole store); ``repr`` never shows the secret."""

    secret: bytes
    protector_id: str
    buckets: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise DeploymentKeyError(f"a deployment key secret is {SECRET_BYTES} bytes")
        if not isinstance(self.protector_id, str) or not self.protector_id:
            raise DeploymentKeyError("a deployment key must name the protector it was made for")
        object.__setattr__(self, "buckets", _check_buckets(self.buckets))

    def __repr__(self) -> str:
        extra = f", buckets={self.buckets}" if self.buckets > 1 else ""
        return f"DeploymentKey(key_id={self.key_id!r}, protector_id={self.protector_id!r}{extra})"

    @property
    def key_id(self) -> str:
        return _key_id(self.secret, self.protector_id, self.buckets)

    @classmethod
    def generate(cls, protector_id: str, buckets: int = 1) -> "DeploymentKey":
        return cls(os.urandom(SECRET_BYTES), protector_id, buckets)

    def bucket(self, ids) -> np.ndarray:
        """The bucket (``int64`` in ``[0, buckets)``) of each stored id: ``HMAC-SHA256(secret, id) mod buckets``.

        ``ids``: one string or a sequence of non-empty strings (the id a template is stored under).
        """
        if isinstance(ids, str):
            ids = [ids]
        elif isinstance(ids, np.ndarray):
            ids = ids.tolist()
        try:
            ids = list(ids)
        except TypeError:
            raise InvalidInputError(f"ids must be a string or a sequence of strings, got {type(ids).__name__}") from None
        bad = [i for i in ids if not isinstance(i, str) or not i]
        if bad:
            raise InvalidInputError(f"ids must be non-empty strings (the ids templates are stored under); bad: {bad[:3]}")
        if self.buckets == 1:
            return np.zeros(len(ids), np.int64)
        digest, secret = hmac.digest, self.secret
        return (np.fromiter((int.from_bytes(digest(secret, b"advface-bucket\0" + i.encode(), "sha256")[:8], "big")
                            for i in ids), np.uint64, len(ids)) % np.uint64(self.buckets)).astype(np.int64)

    def bucket_rotation(self, bucket: int, dim: int) -> np.ndarray:
        """The secret rotation ``R_b`` of bucket ``bucket`` (float32, ``(dim, dim)``); bucketed vectors are ``R_b @ v``.
        A plain key has one bucket, whose rotation is :meth:`rotation`."""
        if isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer)) or not 0 <= bucket < self.buckets:
            raise InvalidInputError(f"bucket must be an integer in [0, {self.buckets}), got {bucket!r}")
        if self.buckets == 1:
            return self.rotation(dim).astype(np.float32)
        dim, bucket = int(dim), int(bucket)
        return _bucket_rotations_t32(self.secret, self.buckets, dim)[:, bucket * dim:(bucket + 1) * dim].T

    def rotation(self, dim: int) -> np.ndarray:
        """The secret ``(dim, dim)`` orthogonal matrix (float64, read-only); keyed vectors are ``R @ v``."""
        return _rotation(self.secret, int(dim))

    def salted_rotation(self, salt: "bytes | str", dim: int) -> np.ndarray:
        """The user rotation ``Q_u · R`` for ``salt`` (float64, read-only); salted vectors are ``(Q_u R) @ v``."""
        return _salted_rotation(self.secret, as_salt(salt), int(dim))

    def check_protector(self, protector_id: str, where: str = "") -> None:
        if protector_id != self.protector_id:
            raise KeyMismatchError(f"deployment key {self.key_id} was made for protector {self.protector_id}, not "
                                   f"{protector_id}{where}: make one for this protector (advface-cli keygen --model ...)")

    def save(self, path: str | Path) -> Path:
        """Write the key to a new file with mode 0600; an existing file is never overwritten."""
        path = Path(path)
        record = {"format": KEY_FORMAT, "key_id": self.key_id, "protector": self.protector_id,
                  "secret": base64.b64encode(self.secret).decode()}
        if self.buckets > 1:
            record.update(format=BUCKETED_KEY_FORMAT, buckets=self.buckets)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise DeploymentKeyError(f"{path} exists; refusing to overwrite a key (templates made with it would be lost)") from None
        except (FileNotFoundError, NotADirectoryError):
            raise DeploymentKeyError(f"cannot write {path}: its folder does not exist") from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DeploymentKey":
        """Read and check a key file; raises :class:`DeploymentKeyError` for anything but an intact, private key."""
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DeploymentKeyError(f"deployment key not found: {path}") from None
        if not stat.S_ISREG(st.st_mode):
            raise DeploymentKeyError(f"{path} is not a key file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise DeploymentKeyError(f"{path} is readable or writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                                     f"run chmod 600 {path}")
        if st.st_size > MAX_KEY_FILE:
            raise DeploymentKeyError(f"{path} is not a deployment key ({st.st_size} bytes)")
        try:
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DeploymentKeyError(f"{path} is not a deployment key (truncated or another file: {exc})") from None
        if record.get("format") not in (KEY_FORMAT, BUCKETED_KEY_FORMAT):
            raise DeploymentKeyError(f"{path} is not an AdvFace deployment key (format {record.get('format')!r}, "
                                     f"expected {KEY_FORMAT} or {BUCKETED_KEY_FORMAT})")
        bucketed = record["format"] == BUCKETED_KEY_FORMAT
        try:
            secret = base64.b64decode(record["secret"], validate=True)
            buckets = record["buckets"] if bucketed else record.get("buckets", 1)
            if bucketed and buckets == 1 or not bucketed and buckets != 1:
                raise ValueError(f"format {record['format']} with buckets={buckets!r}")
            key = cls(secret, str(record["protector"]), buckets)
        except (KeyError, TypeError, ValueError, DeploymentKeyError) as exc:
            raise DeploymentKeyError(f"{path}: damaged deployment key ({type(exc).__name__}: {exc})") from None
        if record.get("key_id") != key.key_id:
            raise DeploymentKeyError(f"{path}: the key id does not match its secret: the file was edited or damaged")
        return key


def as_key(key: "str | os.PathLike | DeploymentKey") -> DeploymentKey:
    """A :class:`DeploymentKey` from itself or a key file path."""
    if isinstance(key, DeploymentKey):
        return key
    if isinstance(key, (str, os.PathLike)):
        return DeploymentKey.load(key)
    raise DeploymentKeyError(f"key must be a key file path or a DeploymentKey, got {type(key).__name__}")
