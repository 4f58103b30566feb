"""`dunning collections export | import | recall | report | schema` as ops run them (Settings from the
environment; export against a real dev server and worker)."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from activities.collections import CollectionsActivities
from activities.outbox import OutboxSender
from activities.sandbox import SandboxGateway
from dunning.cli import app
from dunning.collections import CollectionsConfig, placement_id_for
from dunning.collections.schema import schema_text
from dunning.config import TASK_QUEUE, Settings, get_settings
from dunning.enums import Channel
from dunning.store import Store
from dunning.store.records import PlacementRecord
from dunning.temporal import connect
from tests.support import start_dev_server
from worker import build_worker

runner = CliRunner()
T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'dunning.db'}", "DUNNING_DATA_DIR": str(tmp_path), "COLUMNS": "250", **extra}


def invoke(args: list[str], env: dict[str, str]) -> Result:
    get_settings.cache_clear()  # settings are read once per process
    try:
        return runner.invoke(app, args, env=env)
    finally:
        get_settings.cache_clear()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    for ref, amount, currency in (("in_1", 4900, "usd"), ("in_2", 10000, "eur")):
        store.create_placement(
            PlacementRecord(
                placement_id=placement_id_for(f"dunning-{ref}"),
                journey_id=f"dunning-{ref}",
                payment_reference=ref,
                customer_id=f"cus_{ref}",
                contact={"email": f"{ref}@example.com"},
                amount=amount,
                currency=currency,
                first_failure_at=T0 - timedelta(days=60),
                attempts_summary={"count": 9, "last_decline_class": "insufficient_funds"},
                messages_summary={"count_by_channel": {"email": 4}},
                disputed=False,
                policy_version="default@abc",
                created_at=T0,
            )
        )
    return store


async def test_export_runs_now_and_a_rerun_delivers_the_same_files(tmp_path: Path, store: Store):
    env = await start_dev_server()
    target = env.client.service_client.config.target_host
    out = tmp_path / "partner"
    try:
        client = await connect(Settings(dunning_data_dir=tmp_path, temporal_address=target))
        collections = CollectionsActivities(store, CollectionsConfig(export_url=out.as_uri()))
        async with build_worker(
            client,
            store=store,
            gateway=SandboxGateway(tmp_path / "sandbox.db", public_url="http://127.0.0.1:8000"),
            senders={channel: OutboxSender(channel, store) for channel in Channel},
            task_queue=TASK_QUEUE,
            executor=ThreadPoolExecutor(4),
            collections=collections,
        ):
            args = ["collections", "export", "--date", "2026-11-02", "--timeout", "60"]
            first = await asyncio.wait_for(asyncio.to_thread(invoke, args, cli_env(tmp_path, TEMPORAL_ADDRESS=target)), 90)
            assert first.exit_code == 0, first.output
            assert "delivered exp-2026-11-02 (2026-11-02): 2 placement(s), 0 recall(s)" in first.output
            assert out.as_uri() in first.output
            delivered = {p.name: p.read_bytes() for p in out.iterdir()}
            assert len(delivered) == 5
            second = await asyncio.wait_for(asyncio.to_thread(invoke, args, cli_env(tmp_path, TEMPORAL_ADDRESS=target)), 90)
            assert second.exit_code == 0, second.output
            assert {p.name: p.read_bytes() for p in out.iterdir()} == delivered
            sha_lines = [line for line in first.output.splitlines() if "sha256" in line]
            assert sha_lines == [line for line in second.output.splitlines() if "sha256" in line] and len(sha_lines) == 5
    finally:
        await env.shutdown()


@pytest.mark.parametrize(
    ("day", "message"),
    [("2026-13-01", "--date: '2026-13-01' is not a date; use YYYY-MM-DD"), ("2999-01-01", "--date 2999-01-01 is in the future")],
)
def test_export_rejects_bad_dates_before_connecting(tmp_path: Path, day: str, message: str):
    result = invoke(["collections", "export", "--date", day], cli_env(tmp_path, TEMPORAL_ADDRESS="127.0.0.1:1"))
    assert result.exit_code == 2 and message in result.output


def test_import_applies_a_good_report_and_refuses_a_bad_one_whole(tmp_path: Path, store: Store):
    p1, p2 = placement_id_for("dunning-in_1"), placement_id_for("dunning-in_2")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"placement_id,collected_amount,currency,date,status\n{p1},4900,usd,2026-11-20,collected\n{p2},abc,eur,2026-11-20,partial\n")
    result = invoke(["collections", "import", str(bad)], cli_env(tmp_path))
    assert result.exit_code == 1
    assert "1 problem(s); nothing was applied" in result.output
    assert f"{bad}:line 3, column collected_amount: 'abc' is not a whole number of minor units; fix: write the total" in result.output
    assert store.get_placement(p1).collection_status is None

    good = tmp_path / "good.csv"
    good.write_text(f"placement_id,collected_amount,currency,date,status\n{p1},4900,usd,2026-11-20,collected\n{p2},2500,eur,2026-11-21,partial\n")
    result = invoke(["collections", "import", str(good)], cli_env(tmp_path))
    assert result.exit_code == 0 and f"applied 2 row(s) from {good}" in result.output
    assert store.get_placement(p2).collected_amount == 2500

    report = invoke(["collections", "report", "--json"], cli_env(tmp_path))
    assert report.exit_code == 0, report.output
    currencies = {row["currency"]: row for row in json.loads(report.output)["currencies"]}
    assert currencies["usd"]["collected_amount"] == 4900 and currencies["eur"]["statuses"]["partial"] == 1
    table = invoke(["collections", "report"], cli_env(tmp_path))
    assert table.exit_code == 0 and "eur" in table.output and "usd" in table.output

    missing = invoke(["collections", "import", str(tmp_path / "nope.csv")], cli_env(tmp_path))
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_recall_out_of_band(tmp_path: Path, store: Store):
    result = invoke(["collections", "recall", "in_1", "--source", "bank transfer"], cli_env(tmp_path))
    assert result.exit_code == 0 and "recalled in_1" in result.output
    assert store.placement_for_journey("dunning-in_1").recall_source == "bank transfer"
    again = invoke(["collections", "recall", "in_1"], cli_env(tmp_path))
    assert again.exit_code == 0 and "already recalled" in again.output
    never = invoke(["collections", "recall", "in_never"], cli_env(tmp_path))
    assert never.exit_code == 1 and "never placed" in never.output


def test_schema_prints_the_published_schema(tmp_path: Path):
    result = invoke(["collections", "schema"], cli_env(tmp_path))
    assert result.exit_code == 0 and result.output == schema_text()
