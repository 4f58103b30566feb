"""Every committed journey history must replay on the current workflow code (non-determinism fails CI)."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.support import HISTORIES
from workflows.dunning import DunningWorkflow
from workflows.sandbox import workflow_runner

# One committed history per kind of journey; `make histories` records them.
JOURNEYS = ["recovered_on_retry", "hand_off", "paid_out_of_band", "payment_method_updated", "paused_resumed", "cancelled"]


def test_no_history_is_left_unchecked():
    assert {path.stem for path in HISTORIES.glob("*.json")} <= set(JOURNEYS)


@pytest.mark.parametrize("name", JOURNEYS)
async def test_history_replays_on_current_code(name):
    path = HISTORIES / f"{name}.json"
    assert path.exists(), f"{path} is missing: run `make histories` and commit it"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(
        workflows=[DunningWorkflow], data_converter=pydantic_data_converter, workflow_runner=workflow_runner()
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
