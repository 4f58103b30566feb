"""`dunning scenarios generate` and `dunning simulate` as an ops user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dunning.cli import app
from tests.support import ROOT

DEFAULT = str(ROOT / "policies" / "default.yaml")
BASELINE = str(ROOT / "policies" / "baseline-8-in-2-weeks.yaml")
runner = CliRunner()


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "s.jsonl"
    result = runner.invoke(app, ["scenarios", "generate", "150", "--seed", "4", "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert len(path.read_text().splitlines()) == 150
    return path


def test_generate_to_stdout_is_reproducible():
    first = runner.invoke(app, ["scenarios", "generate", "5", "--seed", "9"])
    second = runner.invoke(app, ["scenarios", "generate", "5", "--seed", "9"])
    assert first.exit_code == 0 and first.stdout == second.stdout
    assert [json.loads(line)["id"] for line in first.stdout.splitlines()][0] == "in_g9_000000"
    moved = runner.invoke(app, ["scenarios", "generate", "1", "--seed", "9", "--start", "2027-03-01T00:00:00Z"])
    assert json.loads(moved.stdout)["failed_at"].startswith("2027-03")
    bad = runner.invoke(app, ["scenarios", "generate", "1", "--start", "2027-03-01"])
    assert bad.exit_code == 2 and "UTC offset" in bad.output


def test_json_report_with_baseline_and_events(scenarios: Path, tmp_path: Path):
    events = tmp_path / "events.jsonl"
    result = runner.invoke(
        app,
        ["simulate", "--policy", DEFAULT, "--scenarios", str(scenarios), "--baseline", BASELINE,
         "--events", str(events), "--json", "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    policy, baseline, delta = report["policy"], report["baseline"], report["delta"]
    assert policy["journeys"] == baseline["journeys"] == 150
    assert policy["policy"].startswith("default@") and baseline["policy"].startswith("baseline-8-in-2-weeks@")
    assert sum(policy["results"].values()) == 150
    assert delta["recovered"]["count"] == policy["recovered"]["count"] - baseline["recovered"]["count"]
    assert delta["attempts"]["total"] == policy["attempts"]["total"] - baseline["attempts"]["total"]
    assert set(policy["messages"]["by_channel"]) == {"email", "sms", "in_app"}
    assert policy["violations"]["network"] == policy["violations"]["messaging"] == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["type"] for e in lines} == {"attempt", "message", "customer", "end"}
    ends = [e for e in lines if e["type"] == "end"]
    assert len(ends) == 150 and {e["result"] for e in ends} <= {"recovered", "handed_off", "cancelled", "disputed"}
    assert sum(1 for e in ends if e["result"] == "recovered") == policy["recovered"]["count"]
    assert sum(1 for e in lines if e["type"] == "attempt") == policy["attempts"]["total"]
    assert sum(1 for e in lines if e["type"] == "message") == policy["messages"]["total"]


def test_table_report(scenarios: Path):
    result = runner.invoke(app, ["simulate", "--policy", DEFAULT, "--scenarios", str(scenarios),
                                 "--baseline", BASELINE, "--workers", "1"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    for row in ("recovered", "recovered JPY", "charge attempts", "per recovery", "messages sms",
                "days to recovery, median", "network-rule violations", "messaging-rule violations", "Δ"):
        assert row in result.stdout, row


def test_bad_scenario_names_line_and_field(tmp_path: Path, scenarios: Path):
    lines = scenarios.read_text().splitlines()[:3]
    broken = json.loads(lines[2])
    broken["customer_response"] = {"after_messages": 0, "delay": "1h", "action": "cancel"}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines[:2] + [json.dumps(broken)]) + "\n")
    result = runner.invoke(app, ["simulate", "--policy", DEFAULT, "--scenarios", str(path), "--workers", "1"])
    assert result.exit_code == 2
    assert f"{path}:3: customer_response.after_messages" in result.output
    missing = runner.invoke(app, ["simulate", "--policy", DEFAULT, "--scenarios", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and "not a readable file" in missing.output


def test_bad_policy_exits_1(tmp_path: Path, scenarios: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(DEFAULT).read_text().replace("{id: retry-2, at: 3d, window: 3d,", "{id: retry-2, at: 3 days, window: 3d,"))
    result = runner.invoke(app, ["simulate", "--policy", str(bad), "--scenarios", str(scenarios)])
    assert result.exit_code == 1 and "invalid policy" in result.output


def test_plot_draws_cumulative_recovery(tmp_path: Path, scenarios: Path):
    png = tmp_path / "recovery.png"
    result = runner.invoke(app, ["simulate", "--policy", DEFAULT, "--scenarios", str(scenarios), "--baseline", BASELINE,
                                 "--plot", str(png), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
