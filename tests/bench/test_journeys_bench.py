"""bench/journeys.py with a handful of journeys: it completes them through the full stack, checks
their ends, and reports figures that add up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, binary

RUN_TIMEOUT = 85


def test_journey_benchmark_small(tmp_path: Path) -> None:
    binary("temporal")
    command = [sys.executable, str(ROOT / "bench" / "journeys.py"), "-n", "7", "--scale", "0.25", "--data-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"the benchmark took more than {RUN_TIMEOUT} s:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-6000:]
    result = json.loads(output.strip().splitlines()[-1])
    assert "journeys completed per second" in output and "history events per journey" in output

    assert result["journeys"] == result["journeys_completed"] == 7
    assert result["violations"] == 0, result["problems"]
    # one case of each kind that starts a journey, each ending where its scenario says
    assert result["ends"] == {
        "card-first: recovered": 1, "card-update: recovered": 1, "handoff: handed_off": 1, "paid: recovered": 1,
        "retry-1: recovered": 1, "retry-2: recovered": 1, "retry-3: recovered": 1,
    }
    assert 0 < result["history_events_mean"] <= result["history_events_max"] <= result["history_target"] == 300
    assert result["history_bytes_mean"] > 0
    # at least: collection context, open, a notice and the hand-off's escalation and placement
    assert result["activities"] >= 7 * 3
    assert result["activities_per_s"] == pytest.approx(result["activities"] / result["span_s"], rel=0.02)
    assert result["journeys_per_s"] == pytest.approx(7 / result["span_s"], rel=0.02)
    # the hand-off journey runs the whole 10 s ladder, so the span cannot be shorter
    assert result["span_s"] >= result["ladder_s"]
    assert len(result["worker_peak_rss_mib"]) == 2
    assert all(rss is not None and rss > 50 for rss in result["worker_peak_rss_mib"])
    assert all(cpu is not None and cpu > 0 for cpu in result["worker_cpu_s"])
