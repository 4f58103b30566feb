"""Export delivery to a local directory (`file:///dir`, the development default)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from dunning.collections.format import RenderedBatch


class FileDestination:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def describe(self) -> str:
        return self.directory.as_uri()

    def deliver(self, batch: RenderedBatch, progress: Callable[[str], None] = lambda _name: None) -> None:
        """Each file is written to `<name>.part`, synced, then renamed over `<name>`: a reader sees
        the old file or the whole new one, and a retry overwrites instead of duplicating."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for file in batch.files:
            part = self.directory / f"{file.name}.part"
            with open(part, "wb") as handle:
                handle.write(file.content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(part, self.directory / file.name)
            progress(file.name)
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the renames themselves survive a crash
        finally:
            os.close(descriptor)
