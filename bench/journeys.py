"""Benchmark whole journeys through the full stack: N concurrent compressed journeys started by signed
webhooks, on the sandbox gateway, with two worker processes.

    .venv/bin/python bench/journeys.py                 # 200 journeys, chaos policy at scale 0.5 (20 s ladder)
    .venv/bin/python bench/journeys.py -n 500 --scale 1

Runs a Temporal dev server (SQLite, WAL) on a temporary data dir, `python worker.py` twice and
`python starter.py` (chaos/stack.py), registers N cases in the sandbox (the chaos suite's kinds
without the one that starts no journey: recovered on retry 1-3, handed off, paid out of band, new
card before or after the failure), posts each case's events once, and waits for every journey to
end. Then it reports, and checks every journey's end like the chaos suite does (a benchmark of
wrong results is no benchmark; exit 1 on any violation):

- journeys completed per second: journeys / (first webhook sent → last journey closed). A journey
  cannot end before its ladder does, so for small N this is bounded by the ladder; the excess of the
  mean journey duration over the ladder shows queueing in the engine;
- activities per second: activity tasks scheduled in all histories over the same span (local
  activities, the store projection, counted apart);
- worker memory and CPU: peak RSS of each worker process (VmHWM from /proc, else psutil's RSS)
  and the CPU time it used from the first webhook until every journey had ended;
- history events per journey (the server's history length): mean, p95, max; target <= 300;
  and the history's size in bytes (protobuf, payloads encrypted by the codec);
- schedule-to-start p95 of activities (first attempts) and workflow tasks, from the histories;
- webhook answer time for the failure events (p50, p95).

The last line is one JSON object with the same figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.api.enums.v1 import EventType  # noqa: E402

from activities.sandbox import SandboxGateway  # noqa: E402
from chaos import checks, observe  # noqa: E402
from chaos.delivery import Deliverer, wait_until_due  # noqa: E402
from chaos.scenarios import KINDS, Case, build_cases, ladder_seconds, run_tag, scaled_policy  # noqa: E402
from chaos.stack import POLICY, ProcessStack, StackFailed, cpu_seconds  # noqa: E402
from dunning.journey import WORKFLOW_NAME  # noqa: E402
from dunning.policy import load_policy  # noqa: E402
from dunning.simulate import percentile  # noqa: E402

BENCH_KINDS = tuple(kind for kind in KINDS if kind != "paid-first")
HISTORY_TARGET = 300
MiB = 1024 * 1024


def percentile_ms(seconds: list[float], q: float) -> float | None:
    value = percentile(seconds, q)
    return None if value is None else round(value * 1000, 1)


async def play(case: Case, gateway: SandboxGateway, deliverer: Deliverer, gate: asyncio.Semaphore, latencies: list[float]) -> None:
    """Each of the case's events once, in its order, at its time (as late as the service allows)."""
    for delivery in case.plan:
        await wait_until_due(case, delivery, gateway)
        if delivery.event is not None:
            async with gate:
                began = time.monotonic()
                await deliverer.deliver(delivery.event)
                if delivery.event["type"] == "invoice.payment_failed":
                    latencies.append(time.monotonic() - began)


@dataclass
class History:
    events: int
    bytes: int
    activities: int  # activity tasks scheduled
    local_activities: int  # markers
    activity_waits: list[float]  # schedule-to-start of first attempts, seconds
    workflow_task_waits: list[float]


async def histories(stack: ProcessStack, journey_ids: list[str]) -> list[History]:
    assert stack.client is not None
    gate = asyncio.Semaphore(8)

    async def one(journey_id: str) -> History:
        async with gate:
            history = await stack.client.get_workflow_handle(journey_id).fetch_history()
        kinds = Counter(event.event_type for event in history.events)
        at = {event.event_id: event.event_time.ToDatetime() for event in history.events}
        activity_waits, task_waits = [], []
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = event.activity_task_started_event_attributes
                if started.attempt == 1:
                    activity_waits.append((at[event.event_id] - at[started.scheduled_event_id]).total_seconds())
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                started = event.workflow_task_started_event_attributes
                task_waits.append((at[event.event_id] - at[started.scheduled_event_id]).total_seconds())
        return History(
            events=len(history.events),
            bytes=sum(event.ByteSize() for event in history.events),
            activities=kinds[EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED],
            local_activities=kinds[EventType.EVENT_TYPE_MARKER_RECORDED],
            activity_waits=activity_waits,
            workflow_task_waits=task_waits,
        )

    return list(await asyncio.gather(*(one(j) for j in journey_ids)))


async def bench(n: int, scale: float, concurrency: int, data_dir: Path, say) -> dict:
    policy_path = scaled_policy(POLICY, data_dir / "bench-policy.yaml", scale)
    policy = load_policy(policy_path)
    ladder = ladder_seconds(policy)
    stack = ProcessStack(data_dir, workers=2, policy=policy_path)
    try:
        say(f"bench: starting the stack in {data_dir}")
        await stack.start()
        assert stack.client is not None and stack.store is not None
        gateway = SandboxGateway(stack.sandbox_path, public_url=stack.http_url)
        # A whole second, like Stripe's `created`: every journey's ladder starts at the first webhook.
        first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        cases = build_cases(n, policy, first, 0.0, run_tag(), BENCH_KINDS)
        for case in cases:
            assert case.scenario is not None
            gateway.register(case.scenario)
        journey_ids = [c.journey_id for c in cases]
        deliverer = Deliverer(stack.http_url, stack.webhook_secret)
        latencies: list[float] = []
        gate = asyncio.Semaphore(concurrency)
        say(f"bench: {n} journeys on {policy.version} (ladder {ladder:.0f} s), webhooks {concurrency} at a time")
        cpu_before = [cpu_seconds(w.pid) for w in stack.workers]
        started_wall = min(c.start for c in cases)  # every case's first webhook is due then
        started = time.monotonic() + (started_wall - datetime.now(UTC)).total_seconds()
        try:
            await asyncio.gather(*(play(c, gateway, deliverer, gate, latencies) for c in cases))
        finally:
            await deliverer.close()
        delivered = time.monotonic() - started
        timeout = ladder + 120.0 + n / 5
        settled = await observe.wait_settled(stack.client, stack.store, n, timeout, say=say)
        closes: list[datetime] = []
        durations: list[float] = []
        async for execution in stack.client.list_workflows(f"WorkflowType = '{WORKFLOW_NAME}'"):
            if execution.close_time is not None:
                closes.append(execution.close_time)
                durations.append((execution.close_time - execution.start_time).total_seconds())
        rss = stack.worker_peak_rss()
        cpu = [
            after - before if after is not None and before is not None else None
            for before, after in zip(cpu_before, (cpu_seconds(w.pid) for w in stack.workers))
        ]
        counts = await histories(stack, journey_ids)
        findings = await checks.verify(cases, stack.client, stack.store, stack.sandbox_path, [w.log_path for w in stack.workers])
        problems = [str(v) for v in findings.violations] + [f"webhook: {p}" for p in deliverer.log.rejected + deliverer.log.gave_up]
        if not settled:
            problems.append(f"not every journey ended within {timeout:.0f} s")
    finally:
        stack.close()
    span = (max(closes) - started_wall).total_seconds() if closes else float("nan")
    lengths = [h.events for h in counts]
    activities = sum(h.activities for h in counts)
    local = sum(h.local_activities for h in counts)
    activity_waits = [w for h in counts for w in h.activity_waits]
    task_waits = [w for h in counts for w in h.workflow_task_waits]
    return {
        "journeys": n,
        "journeys_completed": len(closes),
        "ladder_s": ladder,
        "webhooks_sent_s": round(delivered, 2),
        "span_s": round(span, 2),
        "journeys_per_s": round(len(closes) / span, 2) if closes else 0.0,
        "journey_duration_mean_s": round(statistics.fmean(durations), 2) if durations else None,
        "journey_duration_max_s": round(max(durations), 2) if durations else None,
        "activities": activities,
        "activities_per_s": round(activities / span, 2) if closes else 0.0,
        "local_activities": local,
        "local_activities_per_s": round(local / span, 2) if closes else 0.0,
        "history_events_mean": round(statistics.fmean(lengths), 1) if lengths else None,
        "history_events_p95": round(percentile(lengths, 0.95), 1) if lengths else None,
        "history_events_max": max(lengths) if lengths else None,
        "history_target": HISTORY_TARGET,
        "history_bytes_mean": round(statistics.fmean(h.bytes for h in counts)) if counts else None,
        "activity_schedule_to_start_p95_ms": percentile_ms(activity_waits, 0.95),
        "workflow_task_schedule_to_start_p95_ms": percentile_ms(task_waits, 0.95),
        "worker_peak_rss_mib": [round(r / MiB, 1) if r else None for r in rss],
        "worker_cpu_s": [round(c, 1) if c is not None else None for c in cpu],
        "webhook_p50_ms": percentile_ms(latencies, 0.5),
        "webhook_p95_ms": percentile_ms(latencies, 0.95),
        "ends": dict(sorted(findings.ends.items())),
        "violations": len(problems),
        "violations_by_category": dict(Counter(v.category for v in findings.violations)),
        "problems": problems[:20],
    }


def table(result: dict) -> str:
    rss = ", ".join(f"{r} MiB" if r is not None else "?" for r in result["worker_peak_rss_mib"])
    history_ok = result["history_events_max"] is not None and result["history_events_max"] <= HISTORY_TARGET
    rows = [
        ("journeys completed", f"{result['journeys_completed']} / {result['journeys']}"),
        ("first webhook -> last journey closed", f"{result['span_s']} s (ladder {result['ladder_s']:.0f} s; all webhooks sent in {result['webhooks_sent_s']} s)"),
        ("journeys completed per second", f"{result['journeys_per_s']}"),
        ("journey duration mean / max", f"{result['journey_duration_mean_s']} s / {result['journey_duration_max_s']} s"),
        ("activities per second", f"{result['activities_per_s']} ({result['activities']} activities)"),
        ("local activities per second", f"{result['local_activities_per_s']} ({result['local_activities']})"),
        ("worker peak RSS", rss),
        ("worker CPU time", ", ".join(f"{c} s" for c in result["worker_cpu_s"]) + f" (over {result['span_s']} s)"),
        ("schedule-to-start p95", f"activities {result['activity_schedule_to_start_p95_ms']} ms, workflow tasks {result['workflow_task_schedule_to_start_p95_ms']} ms"),
        ("history events per journey", f"mean {result['history_events_mean']}, p95 {result['history_events_p95']}, max {result['history_events_max']} (target <= {HISTORY_TARGET}: {'ok' if history_ok else 'OVER'}); {result['history_bytes_mean']} bytes mean"),
        ("webhook answer p50 / p95", f"{result['webhook_p50_ms']} ms / {result['webhook_p95_ms']} ms"),
        ("violations", f"{result['violations']} {result['violations_by_category'] or ''}".strip()),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--journeys", type=int, default=200)
    parser.add_argument("--scale", type=float, default=0.5, help="multiply the chaos policy's offsets (0.5 = 20 s ladder)")
    parser.add_argument("--concurrency", type=int, default=16, help="webhook requests in flight at once")
    parser.add_argument("--data-dir", type=Path, default=None, help="use this dir (kept) instead of a temporary one")
    args = parser.parse_args(argv)
    if args.journeys < 1 or args.scale <= 0 or args.concurrency < 1:
        parser.error("--journeys, --scale and --concurrency must be positive")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="dunning-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    say = lambda line: print(line, flush=True)  # noqa: E731
    ok = False
    try:
        result = asyncio.run(bench(args.journeys, args.scale, args.concurrency, data_dir, say))
        print(table(result))
        for problem in result["problems"]:
            print(f"  VIOLATION {problem}")
        print(json.dumps(result, separators=(",", ":")))
        ok = result["violations"] == 0 and result["journeys_completed"] == args.journeys
        return 0 if ok else 1
    except StackFailed as error:
        say(f"bench: the stack did not come up: {error}")
        return 2
    finally:
        if args.data_dir is None and ok:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif not ok:
            say(f"bench: data dir and logs kept in {data_dir}")


def _stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the stack's cleanup


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _stop)
    sys.exit(main())
