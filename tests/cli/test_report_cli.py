"""`dunning report` as an ops user runs it, against the store DATABASE_URL names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dunning.cli import app
from dunning.config import get_settings
from dunning.reports import parse_since, recovery_report
from dunning.store import Store
from tests.dunning.test_reports import seed

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'reports.db'}"
    store = Store(url)
    store.upgrade()
    seed(store)
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()  # settings are read once per process
    yield store
    get_settings.cache_clear()
    store.dispose()


def without_time(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "generated_at"}


def test_json_is_one_object_equal_to_the_report(store: Store):
    result = runner.invoke(app, ["report", "--json"])
    assert result.exit_code == 0, result.output
    assert without_time(json.loads(result.stdout)) == without_time(recovery_report(store).model_dump(mode="json"))

    result = runner.invoke(app, ["report", "--json", "--since", "2026-03-02", "--by", "channel", "--interval", "week"])
    assert result.exit_code == 0, result.output
    expected = recovery_report(store, since=parse_since("2026-03-02"), by="channel", interval="week")
    data = json.loads(result.stdout)
    assert without_time(data) == without_time(expected.model_dump(mode="json"))
    assert data["totals"]["journeys"] == 7 and [g["key"] for g in data["groups"]] == ["email", "sms", "in_app", None]


def test_tables_show_totals_groups_funnel_and_periods(store: Store):
    result = runner.invoke(app, ["report", "--by", "step"], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Recovery report — all payments" in out
    for title in ("Totals", "By step", "Funnel by step", "Over time (per day, UTC)"):
        assert title in out
    rows = [cells(line) for line in out.splitlines() if line.startswith("│")]
    assert ["all", "8", "1", "5", "62.5%", "€80.00 / €87.00 (92.0%)", "1.50", "1.40", "11", "1.20"] in rows
    assert ["", "", "", "", "", "¥0 / ¥500 (0.0%)", "", "", "", ""] in rows  # the next currency's line
    assert ["reminder-1", "2", "1", "1", "50.0%", "€30.00 / €30.00 (100.0%)", "5.00", "2.00", "4", "2.00"] in rows
    assert ["(before any step)", "2", "0", "1", "50.0%", "€15.00 / €22.00 (68.2%)", "0.02", "0.00", "0", "0.00"] in rows
    assert ["(payment failed)", "8", "100.0%", "1", "12.5%"] in rows
    assert ["prompt", "1", "12.5%", "1", "100.0%"] in rows
    assert ["2026-03-02", "3", "2", "66.7%", "1", "€15.00"] in rows
    assert ["2026-03-11", "1", "0", "0.0%", "1", "$50.00"] in rows


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("│").split("│")]


def test_bad_options_are_explained(store: Store):
    naive = runner.invoke(app, ["report", "--since", "2026-03-02T10:00"])
    assert naive.exit_code == 2 and "no UTC offset" in naive.output
    garbage = runner.invoke(app, ["report", "--since", "tomorrow"])
    assert garbage.exit_code == 2 and "use YYYY-MM-DD" in garbage.output
    by = runner.invoke(app, ["report", "--by", "stage"])
    assert by.exit_code == 2 and "decline_class" in by.output and "variant" in by.output


def test_an_unmigrated_store_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'fresh.db'}")
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["report"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "cannot read the store" in result.output and "dunning db upgrade" in result.output
