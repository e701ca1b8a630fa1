"""Where the shared face data and recognizers live (configurable, never hard-coded)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError

ENV_VAR = "FACEPRIV_SHARED"
HOW_TO_GET = (
    f"set {ENV_VAR} to a folder holding data/lfw/aligned112, data/lfw/pairs.txt and models/ "
    "(see README.md, 'Data and recognizers')"
)


def shared_root(required: bool = True) -> Path | None:
    """The folder named by ``$FACEPRIV_SHARED``; raises :class:`DataError` if unset and required."""
    value = os.environ.get(ENV_VAR)
    if not value:
        if required:
            raise DataError(f"no face data configured: {HOW_TO_GET}")
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"{ENV_VAR}={value} is not a folder: {HOW_TO_GET}")
    return root


def shared_path(*parts: str) -> Path:
    """A path inside the shared folder that must exist."""
    path = shared_root().joinpath(*parts)
    if not path.exists():
        raise DataError(f"{path} does not exist: {HOW_TO_GET}")
    return path


def cache_dir() -> Path:
    """Cache for embeddings (``$FACEPRIV_CACHE`` or ``~/.cache/face-privacy``)."""
    path = Path(os.environ.get("FACEPRIV_CACHE", Path.home() / ".cache" / "face-privacy"))
    path.mkdir(parents=True, exist_ok=True)
    return path


PUBLISHED_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def originals_allowed(out_dir: str | Path, originals: bool | None = None) -> bool:
    """Whether a picture written into ``out_dir`` may show the shared data's own photos (LFW, AT&T: third-party
    images of real people, not ours to publish): ``originals`` if given, else only outside the repository's
    committed ``benchmarks/results``."""
    if originals is not None:
        return originals
    return not Path(out_dir).resolve().is_relative_to(PUBLISHED_RESULTS)
