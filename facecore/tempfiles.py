"""Temporary files that never outlive a run: PID-tagged names, SIGTERM cleanup, stale-file removal.

A temp file for ``OUT`` is ``.OUT.tmp<PID>`` beside it. :func:`remove_stale` deletes such files
(and ``.OUT.tmp<PID>.*`` folders) whose process is gone, so a run killed by SIGKILL is cleaned up
by the next one (:func:`remove_stale_in`: those of every file in a folder); :func:`terminate_as_interrupt`
turns SIGTERM into ``KeyboardInterrupt`` so the ``finally`` blocks that clean up after Ctrl-C also run on SIGTERM.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator

_TAG = re.compile(r"\.tmp(\d+)(?:\..*)?$")


def temp_path(target: str | Path, suffix: str = "") -> Path:
    """``.NAME.tmp<PID><suffix>`` beside ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp{os.getpid()}{suffix}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(target: str | Path) -> list[Path]:
    """Remove ``.TARGET.tmp<PID>*`` left beside ``target`` by processes that no longer run."""
    target = Path(target)
    prefix = f".{target.name}.tmp"
    return _remove_dead(target.parent, lambda name: _TAG.match(name[len(prefix) - 4:]) if name.startswith(prefix) else None)


def remove_stale_in(folder: str | Path) -> list[Path]:
    """Remove every ``.NAME.tmp<PID>*`` in ``folder`` left by processes that no longer run: one scan for the
    temporary files of many targets (a folder a killed run was writing into)."""
    return _remove_dead(Path(folder), lambda name: _TAG.search(name) if name.startswith(".") else None)


def _remove_dead(folder: Path, tag: Callable[[str], re.Match | None]) -> list[Path]:
    """Remove the entries of ``folder`` whose name ``tag`` matches with a PID whose process is gone."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        match = tag(path.name)
        if not match or int(match.group(1)) == os.getpid() or pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _raise_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``KeyboardInterrupt`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_os_error(exc: OSError, what: str) -> str:
    """One actionable line for a write error (full disk, file-size limit, permissions)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device while writing {what}; free some space or write elsewhere (nothing was written)"
    if exc.errno == errno.EFBIG:
        return f"file size limit reached while writing {what} (ulimit -f or the filesystem's maximum; nothing was written)"
    return f"cannot write {what}: {exc.strerror or exc} (nothing was written)"
