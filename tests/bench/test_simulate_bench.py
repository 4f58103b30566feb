"""bench/simulate.py on a few hundred scenarios: its file is the CLI generator's, and its figures
agree with `dunning simulate` on that file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dunning.cli import app
from tests.support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import simulate as bench  # noqa: E402  (bench/ is scripts, not a package)

runner = CliRunner()


def test_the_benchmark_file_is_the_generators(tmp_path: Path) -> None:
    made = tmp_path / "bench.jsonl"
    bench.generate(made, 4500, seed=11, workers=2)  # more than one 2,000-group chunk per process
    result = runner.invoke(app, ["scenarios", "generate", "4500", "--seed", "11", "--out", str(tmp_path / "cli.jsonl")])
    assert result.exit_code == 0, result.output
    assert made.read_bytes() == (tmp_path / "cli.jsonl").read_bytes()


def test_the_benchmark_reports_what_dunning_simulate_finds(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "simulate.py"), "-n", "400", "--seed", "3", "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    simulated = re.search(
        r"simulated 400 journeys in ([\d.]+) s: ([\d,]+) journeys/s \(2 processes, \d+ cores, Python ([\d.]+) at (\S+)\)",
        run.stdout,
    )
    assert simulated, run.stdout
    seconds, rate = float(simulated[1]), int(simulated[2].replace(",", ""))
    # the seconds are printed to 0.1 s: the rate must lie within what that rounding allows
    assert 400 / (seconds + 0.05) - 1 <= rate <= 400 / max(seconds - 0.05, 0.001) + 1
    assert simulated[3] == ".".join(map(str, sys.version_info[:3]))
    assert Path(simulated[4]).is_file()

    scenarios = tmp_path / "s.jsonl"
    assert runner.invoke(app, ["scenarios", "generate", "400", "--seed", "3", "--out", str(scenarios)]).exit_code == 0
    result = runner.invoke(
        app, ["simulate", "--policy", str(ROOT / "policies" / "default.yaml"), "--scenarios", str(scenarios), "--json", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["policy"]
    line = (
        f"recovered {report['recovered']['rate']:.1%}, {report['attempts']['total']:,} attempts, "
        f"{report['messages']['total']:,} messages, violations: network {report['violations']['network']}, "
        f"messaging {report['violations']['messaging']}"
    )
    assert line in run.stdout
    assert report["violations"] == {"network": 0, "messaging": 0, "examples": []}
