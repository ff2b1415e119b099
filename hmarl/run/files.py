"""Atomic file writes: a reader sees the previous version of a file or the new one, never half.

Results, checkpoints and reports are written to a temporary file beside their target, synced,
and renamed over it. A process killed mid-write leaves at most a stray ``.*.tmp`` file,
which nothing reads.
"""
from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temp)`` on a fresh temporary file beside ``path``, then rename it to ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would (``mkstemp`` alone would
    make it private, hiding shared results from the rest of a team).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def remove_stray_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`write_atomically` left beside ``path`` when its
    process was killed mid-write; returns what was deleted.

    Only for a file that no other process is writing at the same time: a temporary file being
    written right now looks the same as a stray one.
    """
    path = Path(path)
    stray = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for temp in stray:
        temp.unlink(missing_ok=True)
    return stray
