"""What every export destination (file://, sftp://, https://) implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dunning.collections.format import RenderedBatch


class DeliveryRefused(Exception):
    """The destination said no in a way no retry fixes (credentials, host key, permissions, 4xx)."""


class Destination(Protocol):
    def describe(self) -> str:
        """Where files go, without credentials (stored with the export, shown to ops)."""
        ...

    def deliver(self, batch: RenderedBatch, progress: Callable[[str], None] = ...) -> None:
        """Deliver every file, manifest last, each atomically; safe to repeat (same names, same bytes).
        Raises DeliveryRefused for permanent refusals, anything else for transient faults."""
        ...
