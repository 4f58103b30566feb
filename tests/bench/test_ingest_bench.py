"""bench/ingest.py end to end with a tiny load: it starts its own stack, measures, cleans up, and ends
with the JSON line the README's figures come from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import ROOT


def test_the_ingest_benchmark_runs_end_to_end():
    env = {k: v for k, v in os.environ.items() if k not in ("TEMPORAL_ADDRESS", "DUNNING_HTTP_PORT")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ingest.py"), "--events", "20", "--concurrency", "4", "--rate", "20", "--paced-events", "8"],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures) == {"webhook_rate", "raw_rate", "ratio", "p99_ms"}
    assert figures["webhook_rate"] > 0 and figures["raw_rate"] > 0 and figures["p99_ms"] > 0
    assert abs(figures["ratio"] - figures["webhook_rate"] / figures["raw_rate"]) < 0.01
    table = "\n".join(lines)
    for row in ("webhook, signed, via HTTP (C=4)", "raw start_workflow (C=4)", "webhook paced at 20/s", "raw paced at 20/s", "webhook paced at 5/s"):
        assert row in table
    assert "errors" in table and "ratio webhook/raw" in table
