"""sacred's FileStorageObserver with atomic JSON writes.

sacred rewrites ``run.json`` and ``metrics.json`` in place as a run goes; a process
killed mid-write would leave a truncated file that a report might read. Here every
JSON file is written to a temporary file next to it and moved into place, so a reader
sees the previous version or the new one, never half of one.
"""
from __future__ import annotations

import json
from pathlib import Path

from sacred.observers import FileStorageObserver
from sacred.serializer import flatten

from hmarl.files import write_atomically


class AtomicFileStorageObserver(FileStorageObserver):
    """``FileStorageObserver`` (same folder layout) whose JSON files are replaced atomically."""

    def save_json(self, obj, filename: str) -> None:
        """Write ``obj`` as ``filename`` in the run folder: a temporary file, then an atomic rename."""
        def dump(temp: Path) -> None:
            with open(temp, "w") as f:
                json.dump(flatten(obj), f, sort_keys=True, indent=2)

        write_atomically(Path(self.dir) / filename, dump)
