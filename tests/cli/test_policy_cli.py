"""`dunning policy check | explain | diff` as an ops user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dunning.cli import app
from tests.support import ROOT

DEFAULT = str(ROOT / "policies" / "default.yaml")
DEMO = str(ROOT / "policies" / "demo.yaml")
runner = CliRunner()

FAILURE = {
    "id": "in_cli",
    "amount": 2500,
    "currency": "usd",
    "failed_at": "2026-11-03T14:00:00Z",
    "customer": {"id": "cus_cli", "country": "JP", "locale": "ja", "phone": "+81312345678", "email": "k@example.jp"},
    "payment_methods": [{"id": "pm_1", "brand": "visa", "default": True}],
    "initial_decline": {"payment_method": "pm_1", "decline_code": "insufficient_funds", "network_decline_code": "51"},
    "opted_out": ["sms"],
}


def test_check_accepts_the_shipped_policies():
    for path in (DEFAULT, DEMO):
        result = runner.invoke(app, ["policy", "check", path])
        assert result.exit_code == 0, result.output
        assert "ok" in result.output


def test_check_exits_1_naming_line_step_field_and_fix(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(DEFAULT).read_text().replace("{id: retry-2, at: 3d, window: 3d,", "{id: retry-2, at: 3 days, window: 3d,"))
    result = runner.invoke(app, ["policy", "check", str(bad)])
    assert result.exit_code == 1
    assert "steps[2] (step retry-2).at" in result.output
    assert "line 39" in result.output and "'3d'" in result.output


def test_explain_json_lists_every_action_with_its_reason(tmp_path: Path):
    result = runner.invoke(app, ["policy", "explain", DEFAULT, "--failure", json.dumps(FAILURE), "--json"])
    assert result.exit_code == 0, result.output
    actions = json.loads(result.output)["actions"]
    assert {a["type"] for a in actions} == {"attempt", "message", "escalation"}
    assert all(a["at"].endswith("Z") and a["reason"] for a in actions)
    attempts = [a for a in actions if a["type"] == "attempt"]
    assert len(attempts) == 8 and {a["payment_method"] for a in attempts} == {"pm_1"}
    assert not any(a["channel"] == "sms" for a in actions), "opted-out channel"
    assert actions[-1] == {**actions[-1], "type": "escalation", "action": "hand_off"}


def test_explain_plain_prints_local_times(tmp_path: Path):
    path = tmp_path / "failure.json"
    path.write_text(json.dumps(FAILURE))
    result = runner.invoke(app, ["policy", "explain", DEFAULT, "--failure", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Asia/Tokyo" in result.output and "ends as handed_off" in result.output


def test_explain_rejects_a_bad_failure_clearly():
    result = runner.invoke(app, ["policy", "explain", DEFAULT, "--failure", '{"id": "in_x", "amount": -5}'])
    assert result.exit_code == 2
    assert "amount" in result.output and "currency" in result.output


def test_diff_shows_changed_settings_and_steps(tmp_path: Path):
    changed = tmp_path / "changed.yaml"
    changed.write_text(
        Path(DEFAULT).read_text()
        .replace("visa_reattempts_30d: 15", "visa_reattempts_30d: 20")
        .replace("{id: retry-3, at: 7d, window: 3d,", "{id: retry-3, at: 6d, window: 3d,")
    )
    result = runner.invoke(app, ["policy", "diff", DEFAULT, str(changed)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "limits.visa_reattempts_30d" in result.output and "20" in result.output
    assert "steps.retry-3" in result.output and "retry at 6d" in result.output
    same = runner.invoke(app, ["policy", "diff", DEFAULT, DEFAULT])
    assert "no differences" in same.output
