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
SECRET_BYTES = 32
SALT_BYTES = 16
MAX_KEY_FILE = 4096


def _key_id(secret: bytes, protector_id: str) -> str:
    return hashlib.sha256(KEY_FORMAT.encode() + b"\0" + secret + protector_id.encode()).hexdigest()[:16]


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
    """A deployment secret bound to the protector with id ``protector_id``; ``repr`` never shows the secret."""

    secret: bytes
    protector_id: str

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_BYTES:
            raise DeploymentKeyError(f"a deployment key secret is {SECRET_BYTES} bytes")
        if not isinstance(self.protector_id, str) or not self.protector_id:
            raise DeploymentKeyError("a deployment key must name the protector it was made for")

    def __repr__(self) -> str:
        return f"DeploymentKey(key_id={self.key_id!r}, protector_id={self.protector_id!r})"

    @property
    def key_id(self) -> str:
        return _key_id(self.secret, self.protector_id)

    @classmethod
    def generate(cls, protector_id: str) -> "DeploymentKey":
        return cls(os.urandom(SECRET_BYTES), protector_id)

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
        if record.get("format") != KEY_FORMAT:
            raise DeploymentKeyError(f"{path} is not an AdvFace deployment key (format {record.get('format')!r}, "
                                     f"expected {KEY_FORMAT})")
        try:
            secret = base64.b64decode(record["secret"], validate=True)
            key = cls(secret, str(record["protector"]))
        except (KeyError, TypeError, ValueError) as exc:
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
