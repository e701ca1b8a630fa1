"""Ed25519 signatures over an artifact's checksum manifest (``signature.json``).

The manifest lists the SHA-256 of every file, so one signature over its bytes covers the whole
artifact. A signature is *verified* when it checks out under a trusted public key, *untrusted*
when it checks out only under the key it carries, and *unsigned* when there is none; a signature
that does not check out, or a key that does not match its id, is always an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .artifacts import SIGNATURE, read_manifest
from .errors import ArtifactError, SignatureError

ALGORITHM = "ed25519"


def key_id(public_raw: bytes) -> str:
    """Short id of a raw 32-byte public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - a dependency
        raise SignatureError("artifact signatures need the 'cryptography' package: pip install cryptography") from exc
    return ed25519, serialization, InvalidSignature


def public_key_raw(key: str | Path | bytes) -> bytes:
    """Raw 32-byte public key from a PEM file (public or private key), PEM bytes, or base64 text of the raw key."""
    ed25519, serialization, _ = _crypto()
    data = key if isinstance(key, bytes) else None
    if data is None:
        text = str(key).strip()
        if len(text) == 44 and text.endswith("="):
            try:
                raw = base64.b64decode(text, validate=True)
            except ValueError:
                raw = b""
            if len(raw) == 32:
                return raw
        path = Path(text).expanduser()
        if not path.is_file():
            raise SignatureError(f"trusted key not found: {key} (a PEM file or the base64 raw public key)")
        data = path.read_bytes()
    try:
        if b"PRIVATE KEY" in data:
            obj = serialization.load_pem_private_key(data, password=None).public_key()
        else:
            obj = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read key {key if not isinstance(key, bytes) else '<bytes>'}: {exc}") from exc
    if not isinstance(obj, ed25519.Ed25519PublicKey):
        raise SignatureError("only ed25519 keys are supported")
    return obj.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_key(path: str | Path) -> bytes:
    """Write a new ed25519 private key as PEM (mode 0600); returns the raw public key."""
    ed25519, serialization, _ = _crypto()
    path = Path(path)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_artifact(directory: str | Path, private_key: str | Path, signer: str) -> dict:
    """Sign ``directory``'s checksum manifest with an ed25519 PEM private key; writes ``signature.json``."""
    ed25519, serialization, _ = _crypto()
    directory = Path(directory)
    manifest, _ = read_manifest(directory)
    try:
        private = serialization.load_pem_private_key(Path(private_key).expanduser().read_bytes(), password=None)
    except FileNotFoundError:
        raise SignatureError(f"private key not found: {private_key}") from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read private key {private_key}: {exc}") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise SignatureError("only ed25519 private keys are supported")
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = {"algorithm": ALGORITHM, "signer": str(signer), "key_id": key_id(public),
              "public_key": base64.b64encode(public).decode(), "signed": "checksums.sha256",
              "signature": base64.b64encode(private.sign(manifest)).decode()}
    tmp = directory / f".{SIGNATURE}.tmp{os.getpid()}"
    try:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, directory / SIGNATURE)
    finally:
        tmp.unlink(missing_ok=True)
    return record


@dataclass(frozen=True)
class SignatureStatus:
    """``status``: ``verified`` (trusted key), ``untrusted`` (valid, key not trusted) or ``unsigned``."""

    status: str
    signer: str | None = None
    key_id: str | None = None

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def describe(self) -> str:
        if self.status == "verified":
            return f"verified: signed by {self.signer} (ed25519 key {self.key_id})"
        if self.status == "untrusted":
            return (f"NOT verified: signed by a key that is not trusted here ({self.key_id}, claims to be {self.signer!r}); "
                    "pass --trust KEY if you trust it")
        return "NOT verified: unsigned"


def check_signature(directory: str | Path, trusted: dict[str, bytes]) -> SignatureStatus:
    """Verify ``signature.json`` of ``directory`` against ``trusted`` (``{signer name: raw public key}``).

    Raises :class:`SignatureError` for a malformed signature file or a signature that does not verify.
    """
    ed25519, _, InvalidSignature = _crypto()
    directory = Path(directory)
    path = directory / SIGNATURE
    if path.is_symlink():
        raise SignatureError(f"{path} is a symbolic link; refusing it")
    if not path.exists():
        return SignatureStatus("unsigned")
    manifest, _ = read_manifest(directory)
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm must be {ALGORITHM}")
        public = base64.b64decode(record["public_key"], validate=True)
        signature = base64.b64decode(record["signature"], validate=True)
        if len(public) != 32 or len(signature) != 64:
            raise ValueError("wrong key or signature length")
        if record.get("key_id") != key_id(public):
            raise ValueError(f"key_id {record.get('key_id')!r} is not the id of its public key ({key_id(public)})")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as exc:
        raise SignatureError(f"{path} is malformed ({exc}); the artifact is damaged or was edited") from exc
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, manifest)
    except InvalidSignature:
        raise SignatureError(f"{directory}: the signature does not match {SIGNATURE}'s manifest: the artifact was "
                             "modified after it was signed; refusing it") from None
    kid = key_id(public)
    for name, raw in trusted.items():
        if raw == public:
            return SignatureStatus("verified", name, kid)
    return SignatureStatus("untrusted", str(record.get("signer")), kid)


def artifact_signature_error(directory: Path, status: SignatureStatus) -> ArtifactError:
    return SignatureError(f"{directory}: {status.describe()}; this load requires a signature by a trusted key")
