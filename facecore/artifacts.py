"""Safe artifact folders: JSON config + safetensors weights + SHA-256 checksums, written atomically.

Paths are never followed outside an artifact folder: every name in ``checksums.sha256`` must be
a plain relative path inside the folder (no ``..``, no absolute path, no symlink leading out),
and every JSON file in the folder must be covered by the manifest, so an edited config is caught.
A signature over the manifest (``signature.json``, see :mod:`facecore.signing`) makes the
checksums tamper-evident rather than merely accident-evident.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from .errors import ArtifactError
from .tempfiles import remove_stale

CHECKSUMS = "checksums.sha256"
SIGNATURE = "signature.json"
_UNCOVERED_OK = {CHECKSUMS, SIGNATURE}


def sha256_bytes(data: bytes) -> str:
    """SHA-256 of ``data``, as hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex (read in 1 MiB blocks): the project's one file checksum."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(built: Path, directory: Path) -> None:
    """Move the finished folder ``built`` to ``directory``, swapping out a previous artifact (or an empty folder);
    anything else there (a file, a folder without :data:`CHECKSUMS`) is refused, never deleted."""
    if directory.exists():
        if not directory.is_dir() or (not (directory / CHECKSUMS).is_file() and any(directory.iterdir())):
            raise ArtifactError(f"{directory} exists and is not an artifact folder; refusing to replace it (and delete "
                                "what it holds): write the artifact to a new or empty folder")
        old = directory.with_name(f".{directory.name}.tmp{os.getpid()}.old")
        os.replace(directory, old)
        try:
            os.replace(built, directory)
        except BaseException:  # a signal or an error between the two renames: the previous artifact goes back
            os.replace(old, directory)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, directory)


def write_artifact(directory: str | Path, files: dict[str, bytes | dict]) -> Path:
    """Write ``{name: bytes or JSON dict}`` plus a checksum file into ``directory`` atomically.

    The folder is built beside the target and renamed into place, so a crash never leaves a
    half-written artifact; an existing artifact folder is replaced. The folder gets the usual
    permissions under the process umask (not ``mkdtemp``'s 0700); stale build folders of dead
    processes are removed first.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp{os.getpid()}.", dir=directory.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        sums = []
        for name, content in files.items():
            safe_name(name)
            data = (json.dumps(content, indent=2, sort_keys=True) + "\n").encode() if isinstance(content, dict) else content
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
            sums.append(f"{sha256_bytes(data)}  {name}")
        (tmp / CHECKSUMS).write_text("\n".join(sums) + "\n")
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def safe_name(name: str) -> str:
    """``name`` if it is a plain relative POSIX path without ``..``; raises :class:`ArtifactError`."""
    pure = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or pure.is_absolute() or name.startswith("~")
            or any(part in ("..", "") for part in name.split("/")) or pure.parts[:1] == (".",)):
        raise ArtifactError(f"refusing path {name!r} in an artifact: only plain relative names inside the folder are allowed")
    return name


def member(directory: str | Path, name: str) -> Path:
    """``directory/name`` after checking that it stays inside ``directory`` (symlinks resolved)."""
    directory = Path(directory)
    path = directory / safe_name(name)
    root = directory.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ArtifactError(f"{directory}: {name} leads outside the artifact folder (to {resolved}); refusing it")
    parts = PurePosixPath(name).parts
    for i in range(1, len(parts) + 1):
        if directory.joinpath(*parts[:i]).is_symlink():
            raise ArtifactError(f"{directory}: {name} is a symbolic link; artifacts hold regular files only")
    return path


def read_manifest(directory: Path) -> tuple[bytes, dict[str, str]]:
    """The checksum file's bytes and ``{name: sha256}``, every name checked by :func:`safe_name`."""
    sums_file = directory / CHECKSUMS
    if sums_file.is_symlink() or not sums_file.is_file():
        raise ArtifactError(f"{directory} has no {CHECKSUMS}: not an artifact written by this SDK, or damaged")
    raw = sums_file.read_bytes()
    sums: dict[str, str] = {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{sums_file} is not text: the artifact is damaged") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        digest, name = digest.strip(), name.strip()
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ArtifactError(f"{sums_file}: malformed line {line[:80]!r}")
        sums[safe_name(name)] = digest
    return raw, sums


def verify_artifact(directory: str | Path, required: tuple[str, ...] = (), cover: tuple[str, ...] = ("*.json",)) -> dict[str, str]:
    """Check every file listed in the checksum file; returns ``{name: sha256}``.

    Raises :class:`ArtifactError` for a missing folder, missing files, a checksum mismatch, a
    listed path leading outside the folder, or a file matching ``cover`` (glob patterns, searched
    recursively) that the manifest does not list.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact folder not found: {directory}")
    _, sums = read_manifest(directory)
    for name in required:
        if name not in sums:
            raise ArtifactError(f"{directory}: {name} is missing from the artifact")
    for name, digest in sums.items():
        path = member(directory, name)
        if not path.is_file():
            raise ArtifactError(f"{directory}: {name} is missing")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{directory}: checksum mismatch for {name} (file corrupt or modified)")
    for pattern in cover:
        for path in directory.rglob(pattern):
            rel = path.relative_to(directory).as_posix()
            if rel not in sums and rel not in _UNCOVERED_OK:
                raise ArtifactError(f"{directory}: {rel} is not covered by {CHECKSUMS} (added or edited after the "
                                    "artifact was written); refusing to use it")
    return sums


def read_json(directory: str | Path, name: str = "config.json", expect: type = dict) -> dict | list:
    """Parse ``directory/name`` (inside the folder) and check that it is a JSON ``expect`` (object by default)."""
    path = member(directory, name)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, expect):
        kind = {dict: "object", list: "array"}.get(expect, expect.__name__)
        raise ArtifactError(f"{path} must hold a JSON {kind}, got {type(value).__name__}: damaged or edited")
    return value


def require_keys(config: dict, types: dict[str, type | tuple[type, ...]], where: str) -> None:
    """Raise :class:`ArtifactError` unless every key of ``types`` is in ``config`` with that type (bools are not numbers)."""
    for key, kind in types.items():
        value = config.get(key)
        if value is None:
            raise ArtifactError(f"{where}: {key!r} is missing from the config")
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)) or not isinstance(value, kind):
            raise ArtifactError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
