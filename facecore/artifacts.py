"""Safe artifact folders: JSON config + safetensors weights + SHA-256 checksums, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ArtifactError

CHECKSUMS = "checksums.sha256"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_dir(built: Path, directory: Path) -> None:
    """Move the finished folder ``built`` to ``directory``, swapping out any previous one."""
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old{os.getpid()}")
        os.replace(directory, old)
        os.replace(built, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, directory)


def write_artifact(directory: str | Path, files: dict[str, bytes | dict]) -> Path:
    """Write ``{name: bytes or JSON dict}`` plus a checksum file into ``directory`` atomically.

    The folder is built beside the target and renamed into place, so a crash never leaves a
    half-written artifact; an existing artifact folder is replaced.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        sums = []
        for name, content in files.items():
            data = (json.dumps(content, indent=2, sort_keys=True) + "\n").encode() if isinstance(content, dict) else content
            (tmp / name).write_bytes(data)
            sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
        (tmp / CHECKSUMS).write_text("\n".join(sums) + "\n")
        replace_dir(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def verify_artifact(directory: str | Path, required: tuple[str, ...] = ()) -> dict[str, str]:
    """Check every file listed in the checksum file; returns ``{name: sha256}``.

    Raises :class:`ArtifactError` for a missing folder, missing files or a checksum mismatch.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact folder not found: {directory}")
    sums_file = directory / CHECKSUMS
    if not sums_file.is_file():
        raise ArtifactError(f"{directory} has no {CHECKSUMS}: not an artifact written by this SDK, or damaged")
    sums = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            sums[name.strip()] = digest.strip()
    for name in required:
        if name not in sums:
            raise ArtifactError(f"{directory}: {name} is missing from the artifact")
    for name, digest in sums.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: {name} is missing")
        if sha256_file(path) != digest:
            raise ArtifactError(f"{directory}: checksum mismatch for {name} (file corrupt or modified)")
    return sums


def read_json(directory: str | Path, name: str = "config.json") -> dict:
    try:
        return json.loads((Path(directory) / name).read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{Path(directory) / name} is not valid JSON: {exc}") from exc
