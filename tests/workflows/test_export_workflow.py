"""CollectionsExportWorkflow on the time-skipping server: delivery, identical re-runs, a retry in
the middle of an SFTP delivery, and recalls travelling in the next batch exactly once."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import jsonschema
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from dunning.collections import record_recall
from dunning.collections.export import ExportInput, ExportResult, business_date_for, export_workflow_id
from dunning.collections.schema import RECORD_SCHEMA
from dunning.journey import JourneyStatus
from tests.activities.test_collections_delivery import start_sftp_server
from tests.workflows.test_dunning_workflow import now_of, scenario
from tests.workflows.test_hand_off_placement import worker
from workflows.export import CollectionsExportWorkflow

D1, D2, D3 = date(2027, 1, 5), date(2027, 1, 6), date(2027, 1, 7)
VALIDATOR = jsonschema.Draft202012Validator(RECORD_SCHEMA, format_checker=jsonschema.FormatChecker())


async def export(harness, day: date | None) -> tuple[ExportResult, WorkflowHandle]:
    handle = await harness.client.start_workflow(
        CollectionsExportWorkflow.run,
        ExportInput(business_date=day) if day else None,
        id=export_workflow_id(day) if day else f"export-now-{harness.task_queue}",
        task_queue=harness.task_queue,
    )
    return await handle.result(), handle


def files_of(directory: Path, day: date) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if day.isoformat() in p.name}


def records(files: dict[str, bytes], kind: str) -> list[dict]:
    lines = next(body for name, body in files.items() if name.startswith(kind) and name.endswith(".jsonl"))
    parsed = [json.loads(line) for line in lines.splitlines()]
    for record in parsed:
        VALIDATOR.validate(record)
    return parsed


async def place_journeys(time_env, harness, names: list[str]) -> list[str]:
    now = await now_of(time_env)
    handles = [await harness.start(scenario(now, name=name)) for name in names]
    for handle in handles:
        status: JourneyStatus = await handle.result()
        assert status.stage.value == "handed_off"
    return [h.id for h in handles]


async def test_hand_off_then_export_rerun_and_recall(time_env, harness, tmp_path):
    out = tmp_path / "exports"
    async with worker(harness, tmp_path):
        journeys = await place_journeys(time_env, harness, ["exp_a", "exp_b"])

        first, _ = await export(harness, D1)
        assert (first.export_id, first.placements, first.recalls) == ("exp-2027-01-05", 2, 0)
        assert first.destination == out.as_uri()
        delivered = files_of(out, D1)
        assert list(delivered) == [f.name for f in sorted(first.files, key=lambda f: f.name)]
        placed = records(delivered, "placements")
        assert sorted(r["journey_id"] for r in placed) == sorted(journeys)
        manifest = json.loads(delivered["manifest-2027-01-05.json"])
        assert manifest["placements"] == {"count": 2, "amount_by_currency": {"usd": 8400}}

        # A later hand-off waits for the next date; re-running D1 re-delivers identical bytes.
        later = (await place_journeys(time_env, harness, ["exp_c"]))[0]
        for path in out.iterdir():
            path.unlink()
        again, _ = await export(harness, D1)
        assert again.files == first.files and files_of(out, D1) == delivered

        second, _ = await export(harness, D2)
        assert [r["journey_id"] for r in records(files_of(out, D2), "placements")] == [later]

        paid_at = await now_of(time_env)
        assert record_recall(harness.store, "in_exp_a", paid_at, "invoice.paid")
        assert not record_recall(harness.store, "in_exp_a", paid_at, "invoice.paid")
        third, _ = await export(harness, D3)
        assert (third.placements, third.recalls) == (0, 1)
        recalled = records(files_of(out, D3), "recalls")
        assert [(r["journey_id"], r["source"]) for r in recalled] == [("dunning-in_exp_a", "invoice.paid")]
        fourth, _ = await export(harness, D3 + timedelta(days=1))
        assert (fourth.placements, fourth.recalls) == (0, 0), "a recall travels once"
    timeline = harness.store.get_journey("dunning-in_exp_a").timeline
    assert timeline[-1]["kind"] == "recall" and "invoice.paid" in timeline[-1]["text"]


async def test_a_run_without_a_date_exports_the_merchants_today(time_env, harness, tmp_path):
    zone = "Pacific/Kiritimati"  # UTC+14: the date differs from UTC's for most of the day
    async with worker(harness, tmp_path, merchant_timezone=zone):
        before = await now_of(time_env)
        result, _ = await export(harness, None)
    assert result.business_date == business_date_for(before, zone)


async def test_a_failure_mid_sftp_delivery_is_retried_without_duplicates(time_env, harness, tmp_path):
    server = await start_sftp_server(tmp_path)
    try:
        async with worker(harness, tmp_path, export_url=server.url("/drop"), known_hosts=server.known_hosts):
            await place_journeys(time_env, harness, ["sftp_a", "sftp_b"])
            server.fail_renames["placements-2027-01-05.jsonl"] = 1  # the second file of the batch
            result, handle = await export(harness, D1)
            again, _ = await export(harness, D2)
    finally:
        await server.close()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert attempts == [1, 2], "build once, deliver twice"
    drop = server.root / "drop"
    assert sorted(p.name for p in drop.iterdir() if "2027-01-05" in p.name) == sorted(f.name for f in result.files)
    for file in result.files:
        assert (drop / file.name).stat().st_size == file.bytes
    placed = records(files_of(drop, D1), "placements")
    assert sorted(r["payment_reference"] for r in placed) == ["in_sftp_a", "in_sftp_b"]
    assert (again.placements, again.recalls) == (0, 0), "each placement is in exactly one batch"
    assert server.renames.count("placements-2027-01-05.csv") == 2 and server.renames.count("manifest-2027-01-05.json") == 1
