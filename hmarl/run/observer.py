"""sacred's FileStorageObserver with atomic writes, and runs that fail when their records do.

sacred rewrites ``run.json`` and ``metrics.json`` in place as a run goes; a process
killed mid-write would leave a truncated file that a report might read. Here every
file the observer writes (JSON, artifacts, source copies) goes to a temporary file next
to it and is moved into place, so a reader sees the previous version or the new one,
never half of one.

sacred only logs a warning when an observer fails to write during a run (metrics,
heartbeats, artifacts) and then marks the run COMPLETED, with metrics cut short. This
observer remembers its first failed write: it never writes COMPLETED after one, and
:func:`records_failure` lets the runner fail the run while it still can.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, TypeVar

from sacred.dependencies import get_digest
from sacred.observers import FileStorageObserver
from sacred.serializer import flatten

from hmarl.run.files import write_atomically

T = TypeVar("T")

#: Files of the run folder that only the observer itself writes (sacred's own guard).
RESERVED = ("run.json", "config.json", "cout.txt", "metrics.json")

WHAT_TO_DO = "free disk space or give the run a writable folder"


class RecordsLost(OSError):
    """A write of the run's records failed: the run must not end COMPLETED."""


def describe(error: OSError, target: str | Path | None = None) -> str:
    """``path: reason`` of a failed write, e.g. ``results/3/metrics.json: No space left on device``."""
    where = target or error.filename
    reason = error.strerror or str(error) or type(error).__name__
    return f"{where}: {reason}" if where else reason


class AtomicFileStorageObserver(FileStorageObserver):
    """``FileStorageObserver`` (same folder layout) whose files are replaced atomically and
    which records, instead of hiding, a failed write."""

    failure: str | None = None
    """``path: reason`` of the first write that failed, or None."""

    def _write(self, target: str | Path, write: Callable[[], T]) -> T:
        try:
            return write()
        except OSError as error:
            if self.failure is None:
                self.failure = describe(error, target)
            raise

    def save_json(self, obj, filename: str) -> None:
        """Write ``obj`` as ``filename`` in the run folder: a temporary file, then an atomic rename."""
        def dump(temp: Path) -> None:
            with open(temp, "w") as f:
                json.dump(flatten(obj), f, sort_keys=True, indent=2)

        target = Path(self.dir) / filename
        self._write(target, lambda: write_atomically(target, dump))

    def save_file(self, filename: str, target_name: str | None = None) -> None:
        """Copy ``filename`` into the run folder as ``target_name`` (an artifact), atomically."""
        target = Path(self.dir) / (target_name or os.path.basename(filename))
        if target.name in RESERVED and target.parent == Path(self.dir):
            raise FileExistsError(f"{target.name} is written by the observer itself; name the file otherwise")
        if target.exists() and os.path.samefile(filename, target):
            return
        self._write(target, lambda: write_atomically(target, lambda temp: shutil.copyfile(filename, temp)))

    def save_cout(self) -> None:
        """Write the captured output atomically."""
        self._write(Path(self.dir) / "cout.txt", super().save_cout)

    def find_or_save(self, filename: str, store_dir: Path) -> Path:
        """Copy a source file to ``store_dir`` under its digest, atomically (sacred would skip a
        truncated copy left by a failed write forever, since its name says it is there)."""
        store_dir = Path(store_dir)
        name, ext = os.path.splitext(os.path.basename(filename))
        store_path = store_dir / f"{name}_{get_digest(filename)}{ext}"
        if not store_path.exists():
            self._write(store_path, lambda: write_atomically(store_path, lambda temp: shutil.copyfile(filename, temp)))
        return store_path

    def started_event(self, *args: Any, **kwargs: Any):
        """Create the run folder and its first records; a folder that cannot be written stops
        the run with one line."""
        try:
            return super().started_event(*args, **kwargs)
        except OSError as error:
            if self.failure is None:
                self.failure = describe(error)
            raise SystemExit(f"hmarl: could not write the run's records ({self.failure}); {WHAT_TO_DO}") from None

    def completed_event(self, stop_time, result) -> None:
        """``COMPLETED``, unless a write failed during the run: then ``FAILED``, naming it."""
        if self.failure is not None:
            self.failed_event(stop_time, [f"hmarl: could not write the run's records ({self.failure})\n"])
            return
        try:
            super().completed_event(stop_time, result)
        except OSError:  # remembered in self.failure; the command line exits with it
            pass

    def failed_event(self, fail_time, fail_trace) -> None:
        """Record FAILED; a write that fails too is left unreported (the run fails anyway)."""
        try:
            super().failed_event(fail_time, fail_trace)
        except OSError:  # the run fails anyway; sacred would print a traceback of this write
            pass

    def interrupted_event(self, interrupt_time, status) -> None:
        """Record INTERRUPTED; a write that fails too is left unreported."""
        try:
            super().interrupted_event(interrupt_time, status)
        except OSError:
            pass


def records_failure(run) -> str | None:
    """Why some of ``run``'s records were not written (a sacred ``Run``), or None.

    Our observers say which file and why; any other observer that failed (sacred keeps a list
    of them, and only logs a warning for each) is named, its reason being in that warning.
    """
    for observer in run.observers:
        if getattr(observer, "failure", None):
            return observer.failure
    # sacred 0.8.7 (pinned) has no public accessor for its failed observers
    failed = getattr(run, "_failed_observers", [])
    return f"the {type(failed[0]).__name__} failed to write (see sacred's warning above)" if failed else None


def check_records(run) -> None:
    """Raise :class:`RecordsLost` if a write of ``run``'s records failed."""
    failure = records_failure(run)
    if failure is not None:
        raise RecordsLost(f"could not write the run's records ({failure}); {WHAT_TO_DO}")
