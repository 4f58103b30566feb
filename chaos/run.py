"""The chaos run: real processes, signed webhooks, killed workers, a restarted server, then checks.

    .venv/bin/python -m chaos --journeys 30            # make chaos N=30
    .venv/bin/python -m chaos --journeys 8 --scale 0.5 --spread 8 --lost-responses 2 \
        --fail-orphaned-activities                      # what tests/chaos/test_chaos.py runs

Sequence: start the stack (dev server on its own SQLite file in WAL mode, two workers, the HTTP
service with STRIPE_WEBHOOK_SECRET), register every case in the sandbox, then play each case's
events — every one delivered 3 times, some out of order — while a controller:

1. waits for charges to reach the gateway, makes the next few charge calls lose their answer
   after charging (sandbox `fail_next(n, "timeout")`: the charge exists, the activity fails and
   is retried 5 s later), and kills a worker with SIGKILL while those charge activities are
   pending (and whatever else it was running);
2. while that worker is down, stops the Temporal server (SIGTERM) and starts it again on the
   same SQLite file, with webhooks and the other worker's activities in flight;
3. starts the killed worker again, and repeats for `--kills` / `--restarts` rounds, taking the
   workers in turn.

A worker killed in the middle of an activity leaves that attempt to its start-to-close timeout
(2 minutes in the workflow): by default the run waits it out. `--fail-orphaned-activities` fails
such attempts by id instead (RespondActivityTaskFailedById, as if the timeout had fired), so a
short run in CI need not wait two minutes; the run reports how many it failed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from activities.sandbox import SandboxGateway
from chaos import checks, observe
from chaos.delivery import Deliverer, DeliveryLog, wait_until_due
from chaos.scenarios import Case, build_cases, ladder_seconds, run_tag, scaled_policy
from chaos.stack import POLICY, ProcessStack, StackFailed, identity
from dunning.policy import load_policy

ACTIVITY_START_TO_CLOSE = 120.0  # workflows/dunning.py ACTIVITY_TIMEOUT
CHARGES_WAIT = 60.0  # for charges to reach the gateway before a kill
FAULTS_WAIT = 20.0  # for the injected lost answers to be used up
WORKER_DOWN_FOR = 1.0
SERVER_DOWN_FOR = 1.0


@dataclass
class Options:
    journeys: int = 30
    kills: int = 2
    restarts: int = 1
    lost_responses: int = 3
    scale: float = 1.0
    spread: float | None = None  # seconds over which the cases start; default min(N / 4, 10)
    timeout: float | None = None  # for all journeys to end after the last event; default from the ladder
    fail_orphaned_activities: bool = False
    data_dir: Path | None = None
    keep: bool = False

    def spread_seconds(self) -> float:
        return self.spread if self.spread is not None else min(self.journeys / 4, 10.0)


@dataclass
class Kill:
    at: float
    worker: str
    pid: int
    lost_answers: int  # charges made whose answer the sandbox dropped just before the kill
    charges_pending: int  # payments.charge activities not yet completed at the kill
    started_on_victim: int  # activities (any type) the killed worker was running
    orphans_failed: int = 0


@dataclass
class Restart:
    at: float
    unreachable_for: float
    orphans_failed: int = 0


@dataclass
class Report:
    cases: list[Case]
    kills: list[Kill] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    chaos_problems: list[str] = field(default_factory=list)
    findings: checks.Findings | None = None
    deliveries: DeliveryLog | None = None
    settled: bool = False
    seconds: float = 0.0


class Run:
    def __init__(self, options: Options, say=print) -> None:
        self.o = options
        self.say = say
        self.began = time.monotonic()
        self.stack: ProcessStack | None = None
        self.sweeps: list[asyncio.Task] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    # -- playing the customers and Stripe -------------------------------------------------------

    async def play(self, case: Case, gateway: SandboxGateway, deliverer: Deliverer) -> None:
        for delivery in case.plan:
            await wait_until_due(case, delivery, gateway)
            if delivery.event is not None:
                await deliverer.deliver_copies(delivery.event, delivery.copies, delivery.how)

    # -- the controller -------------------------------------------------------------------------

    async def chaos(self, report: Report, gateway: SandboxGateway, journey_ids: list[str]) -> None:
        stack = self.stack
        assert stack is not None and stack.client is not None
        for round_ in range(max(self.o.kills, self.o.restarts)):
            killed: int | None = None
            if round_ < self.o.kills:
                killed = await self.kill(round_, report, gateway, journey_ids)
            if round_ < self.o.restarts:
                # While the killed worker is still down: the survivor and the HTTP service lose the
                # server mid-run, with webhooks and charges in flight.
                await self.restart(report, journey_ids)
            if killed is not None:
                worker = stack.workers[killed]
                await stack.start_worker(killed)
                self.say(f"chaos: t={self.elapsed():5.1f}s {worker.name} is back (pid {worker.pid})")

    async def kill(self, round_: int, report: Report, gateway: SandboxGateway, journey_ids: list[str]) -> int | None:
        """Kill a worker while charge activities are in flight; the index of the killed worker."""
        stack = self.stack
        assert stack is not None and stack.client is not None
        sandbox = stack.sandbox_path
        baseline = observe.charge_count(sandbox)
        if not await observe.wait_until(lambda: observe.charge_count(sandbox) > baseline, CHARGES_WAIT):
            report.chaos_problems.append(f"kill {round_ + 1}: no new charge reached the gateway within {CHARGES_WAIT:.0f} s; not killed")
            return None
        lost = 0
        if self.o.lost_responses:
            await asyncio.to_thread(gateway.fail_next, self.o.lost_responses, "timeout")
            await observe.wait_until(lambda: observe.faults_left(sandbox) == 0, FAULTS_WAIT)
            lost = self.o.lost_responses - observe.faults_left(sandbox)
            await asyncio.to_thread(gateway.fail_next, 0, "timeout")
        index = round_ % len(stack.workers)
        worker = stack.workers[index]
        victim = identity(worker.pid)
        pid = stack.kill_worker(index)
        at = self.elapsed()
        # After the kill nothing new starts on the victim: what is started there now was in flight.
        pending = await observe.pending_activities(stack.client, journey_ids)
        orphans = [p for p in pending if p.started and p.worker == victim]
        kill = Kill(
            at=at,
            worker=worker.name,
            pid=pid,
            lost_answers=lost,
            charges_pending=sum(p.activity_type == observe.CHARGE_ACTIVITY for p in pending),
            started_on_victim=len(orphans),
        )
        report.kills.append(kill)
        self.say(
            f"chaos: t={kill.at:5.1f}s kill -9 {worker.name} (pid {pid}): {lost} charge answers lost just before; "
            f"{kill.charges_pending} charge activities pending, {len(orphans)} activities were running on it"
        )
        if self.o.fail_orphaned_activities and orphans:
            kill.orphans_failed = await observe.fail_attempts(stack.client, orphans, f"worker {victim} was killed")
            self.say(f"chaos: failed {kill.orphans_failed} attempt(s) the killed worker held (instead of their 2-minute timeout)")
        await asyncio.sleep(WORKER_DOWN_FOR)
        return index

    async def restart(self, report: Report, journey_ids: list[str]) -> None:
        stack = self.stack
        assert stack is not None
        at = self.elapsed()
        stopped_at = datetime.now(UTC)
        down = await stack.restart_temporal(down_for=SERVER_DOWN_FOR)
        restart = Restart(at=at, unreachable_for=down)
        report.restarts.append(restart)
        self.say(f"chaos: t={at:5.1f}s Temporal server restarted on the same SQLite file ({down:.1f} s unreachable)")
        if self.o.fail_orphaned_activities:
            self.sweeps.append(asyncio.create_task(self.fail_stale(restart, stopped_at, journey_ids)))

    async def fail_stale(self, restart: Restart, stopped_at: datetime, journey_ids: list[str]) -> None:
        """Answers lost while the server was down leave attempts started before the stop waiting
        for their timeout: give live workers time to report, then fail those still started."""
        assert self.stack is not None and self.stack.client is not None
        await asyncio.sleep(5.0)
        stale = [
            p for p in await observe.pending_activities(self.stack.client, journey_ids)
            if p.started and p.last_started is not None and p.last_started.replace(tzinfo=UTC) < stopped_at
        ]
        restart.orphans_failed = await observe.fail_attempts(self.stack.client, stale, "its answer was lost in a server restart")
        if restart.orphans_failed:
            self.say(f"chaos: failed {restart.orphans_failed} attempt(s) whose answer the restart lost")

    # -- the whole run --------------------------------------------------------------------------

    async def run(self) -> Report:
        o = self.o
        data_dir = o.data_dir
        assert data_dir is not None, "main() chooses the data dir"
        data_dir.mkdir(parents=True, exist_ok=True)
        policy_path = scaled_policy(POLICY, data_dir / "chaos-policy.yaml", o.scale)
        policy = load_policy(policy_path)
        self.stack = stack = ProcessStack(data_dir, workers=2, policy=policy_path)
        self.say(f"chaos: data dir {data_dir}; policy {policy.version} (ladder {ladder_seconds(policy):.0f} s)")
        await stack.start()
        assert stack.client is not None and stack.store is not None
        self.say(
            f"chaos: t={self.elapsed():5.1f}s stack up: Temporal 127.0.0.1:{stack.temporal_port}, "
            f"workers pid {', '.join(str(w.pid) for w in stack.workers)}, HTTP {stack.http_url}"
        )
        gateway = SandboxGateway(stack.sandbox_path, public_url=stack.http_url)
        cases = build_cases(o.journeys, policy, datetime.now(UTC) + timedelta(seconds=1.5), o.spread_seconds(), run_tag())
        for case in cases:
            assert case.scenario is not None
            gateway.register(case.scenario)
        report = Report(cases=cases)
        journey_ids = [c.journey_id for c in cases if c.expected.journey]
        deliverer = Deliverer(stack.http_url, stack.webhook_secret)
        try:
            players = asyncio.gather(*(self.play(case, gateway, deliverer) for case in cases))
            controller = asyncio.create_task(self.chaos(report, gateway, journey_ids))
            await players
            await controller
            await asyncio.gather(*self.sweeps)
            self.say(f"chaos: t={self.elapsed():5.1f}s every event delivered; waiting for the journeys to end")
            timeout = o.timeout if o.timeout is not None else (
                ladder_seconds(policy) + (30.0 if o.fail_orphaned_activities else ACTIVITY_START_TO_CLOSE + 40.0) + 30.0
            )
            report.settled = await observe.wait_settled(
                stack.client, stack.store, len(journey_ids), timeout, say=self.say
            )
            if not report.settled:
                report.chaos_problems.append(f"journeys or webhook events still open {timeout:.0f} s after the last delivery")
            logs = [w.log_path for w in stack.workers]
            report.findings = await checks.verify(cases, stack.client, stack.store, stack.sandbox_path, logs)
        finally:
            await deliverer.close()
        report.deliveries = deliverer.log
        report.seconds = self.elapsed()
        return report


def summarize(report: Report, say=print) -> bool:
    """Print the table, the violations and the summary line; True for PASS."""
    findings = report.findings or checks.Findings()
    log = report.deliveries
    cases = report.cases
    events = {e["id"] for c in cases for e in c.events()}
    accepted = log.accepted if log else 0
    duplicates = accepted - len(events)
    say("")
    say(f"{'case kind':<14}{'cases':>6}  ends")
    kinds = Counter(c.kind for c in cases)
    for kind in sorted(kinds):
        ends = ", ".join(f"{n} {end.split(': ', 1)[1]}" for end, n in sorted(findings.ends.items()) if end.startswith(kind + ":"))
        expected = cases[[c.kind for c in cases].index(kind)].expected
        say(f"{kind:<14}{kinds[kind]:>6}  {ends or '-'}  (expected {expected.stage or 'no journey'})")
    say("")
    for kill in report.kills:
        say(
            f"kill -9 {kill.worker} at {kill.at:.1f} s: {kill.lost_answers} charge answers lost before it, "
            f"{kill.charges_pending} charge activities pending, {kill.started_on_victim} running on it, {kill.orphans_failed} failed early"
        )
    for restart in report.restarts:
        say(f"server restart at {restart.at:.1f} s: unreachable {restart.unreachable_for:.1f} s, {restart.orphans_failed} attempts failed early")
    if log:
        say(
            f"webhooks: {len(events)} events, {accepted} deliveries answered 2xx ({log.duplicates} recognised as duplicates), "
            f"{log.redelivered} redeliveries after a 5xx or no connection; answers {dict(log.statuses)}"
        )
        for problem in log.rejected + log.gave_up:
            findings.add(checks.OTHER, "webhook", problem)
    say(f"gateway: {findings.charges} charges; outbox: {findings.messages} messages; run took {report.seconds:.0f} s")
    for problem in report.chaos_problems:
        findings.add(checks.OTHER, "chaos", problem)
    for violation in findings.violations[:40]:
        say(f"VIOLATION {violation}")
    if len(findings.violations) > 40:
        say(f"... and {len(findings.violations) - 40} more")
    ok = not findings.violations
    journeys = sum(c.expected.journey for c in cases)
    say(
        f"chaos: {len(cases)} journeys ({journeys} started, {len(cases) - journeys} paid before their failure arrived), "
        f"{len(report.kills)} worker kills, {len(report.restarts)} server restarts, "
        f"{accepted} webhook deliveries ({duplicates} duplicates): {findings.count(checks.LOST)} lost, "
        f"{findings.count(checks.DOUBLE_CHARGE)} double charges, {findings.count(checks.DOUBLE_MESSAGE)} double messages, "
        f"{findings.count(checks.WRONG_END)} wrong ends, {findings.count(checks.OTHER)} other — {'PASS' if ok else 'FAIL'}"
    )
    return ok


def main(options: Options, say=print) -> int:
    created = options.data_dir is None
    if created:
        options.data_dir = Path(tempfile.mkdtemp(prefix="dunning-chaos-"))
    run = Run(options, say)
    ok = False
    try:
        try:
            report = asyncio.run(run.run())
        except StackFailed as error:
            say(f"chaos: the stack did not come up: {error}")
            return 2
        ok = summarize(report, say)
        if len(report.kills) < options.kills or len(report.restarts) < options.restarts:
            ok = False
        return 0 if ok else 1
    finally:
        if run.stack is not None:
            run.stack.close()
        if ok and created and not options.keep:
            shutil.rmtree(options.data_dir, ignore_errors=True)
        elif options.data_dir is not None:
            say(f"chaos: data dir and logs kept in {options.data_dir}")
