"""Webhook ingest benchmark: signed Stripe failure events through POST /webhooks/stripe, against raw
starts on the same Temporal server.

    .venv/bin/python bench/ingest.py [--events N] [--concurrency C] [--rate R] [--paced-events M]

Starts what it needs on loopback in a temporary directory: a Temporal dev server on a SQLite file
with WAL pragmas, and the HTTP service (`starter.py`, uvicorn) with a webhook secret. With
TEMPORAL_ADDRESS and/or DUNNING_HTTP_PORT set it uses that running stack instead (then
STRIPE_WEBHOOK_SECRET must be the service's secret, and the store named by DATABASE_URL /
DUNNING_DATA_DIR gives the policy version); its journeys (ids dunning-in_bench…) are left there.

Measures, in ABBA order so the server's growing database favours neither: the webhook rate (N
events at concurrency C, timed until every one is carried out — its journey started in Temporal,
its inbox row `processed` — not merely answered), the raw rate (the same signal-with-start,
`dunning.triggers.start_journey`, straight to Temporal at concurrency C), and the answer latency
at a paced R events/s (an answer comes once the event is recorded and its start done, or after
DUNNING_WEBHOOK_ANSWER_WITHIN_MS as `accepted`; the table says how long the backlog took to drain
after the last answer). Prints a table, then as its last line
{"webhook_rate": …, "raw_rate": …, "ratio": …, "p99_ms": …}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from dunning import simulate  # noqa: E402
from dunning.config import Settings  # noqa: E402
from dunning.models import Customer, FailedPayment  # noqa: E402
from dunning.policies import policy_for_new_journeys  # noqa: E402
from dunning.stack import search_attribute_flags, temporal_binary  # noqa: E402
from dunning.store import Store  # noqa: E402
from dunning.store.schema import WebhookEvent  # noqa: E402
from dunning.stripe_events import signature_header  # noqa: E402
from dunning.temporal import connect  # noqa: E402
from dunning.triggers import start_journey  # noqa: E402

START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
WARM_UP = 50
DRAIN_TIMEOUT = 120.0
BENCH_SECRET = "whsec_bench_" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    temporal: str
    http_url: str
    secret: str
    settings: Settings
    processes: list[subprocess.Popen] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # name -> pid of what we started


def _spawn(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = log.open("ab")
    # Own session: a Ctrl-C reaches the benchmark, which then stops its children itself.
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def _wait_for(what: str, check, proc: subprocess.Popen | None, log: Path | None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise SystemExit(f"{what} exited with code {proc.returncode}:\n{tail}")
        try:
            if await check():
                return
        except Exception as error:  # not up yet
            last = error
        await asyncio.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {START_TIMEOUT:.0f} s ({last})")


@contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dunning-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def start_stack(workdir: Path) -> Stack:
    env = dict(os.environ)
    external_http = "DUNNING_HTTP_PORT" in env
    external_temporal = "TEMPORAL_ADDRESS" in env or external_http
    processes: list[subprocess.Popen] = []
    notes: list[str] = []
    pids: dict[str, int] = {}
    if external_temporal:
        target = Settings().temporal_target
        notes.append(f"Temporal: running server at {target}")
    else:
        port = free_port()
        target = f"127.0.0.1:{port}"
        log = workdir / "temporal.log"
        command = [
            temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port), "--headless",
            "--db-filename", str(workdir / "temporal.db"),
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            *search_attribute_flags(), "--log-level", "error",
        ]
        processes.append(_spawn(command, log))
        pids["temporal"] = processes[-1].pid
        notes.append("Temporal: dev server, SQLite file with journal_mode=wal, synchronous=normal")

        async def temporal_up() -> bool:
            from temporalio.client import Client

            client = await asyncio.wait_for(Client.connect(target), 2)
            return await client.service_client.check_health()

        await _wait_for("the Temporal dev server", temporal_up, processes[0], log)
    if external_http:
        secret = env.get("STRIPE_WEBHOOK_SECRET")
        if not secret:
            raise SystemExit("DUNNING_HTTP_PORT names a running service: set STRIPE_WEBHOOK_SECRET to its webhook secret")
        settings = Settings()
        http_url = f"http://127.0.0.1:{settings.dunning_http_port}"
        notes.append(f"HTTP: running service at {http_url}")
    else:
        secret = BENCH_SECRET
        http_port = free_port()
        service_env = {
            k: v for k, v in env.items()
            if not k.startswith(("STRIPE_", "SENDGRID_", "TWILIO_", "DATABASE_URL", "DUNNING_"))
        }
        service_env.update(
            DUNNING_DATA_DIR=str(workdir / "data"),
            TEMPORAL_ADDRESS=target,
            DUNNING_HTTP_PORT=str(http_port),
            STRIPE_WEBHOOK_SECRET=secret,
            DUNNING_API_TOKEN="bench-" + uuid.uuid4().hex,
        )
        log = workdir / "http.log"
        processes.append(_spawn([sys.executable, str(ROOT / "starter.py")], log, service_env))
        pids["http"] = processes[-1].pid
        http_url = f"http://127.0.0.1:{http_port}"
        notes.append("HTTP: starter.py (uvicorn, one process) on loopback")

        async def http_up() -> bool:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{http_url}/healthz")).status_code == 200

        await _wait_for("the HTTP service", http_up, processes[-1], log)
        # The same store, data dir (payload key) and Temporal as the service: raw starts compare like for like.
        settings = Settings(dunning_data_dir=workdir / "data", temporal_address=target, database_url=None)
    return Stack(target, http_url, secret, settings, processes, notes, pids)


# --- events -----------------------------------------------------------------------------------------


def failure_event(run: str, n: int) -> dict[str, Any]:
    """An invoice.payment_failed as Stripe sends it (trimmed to the fields a real one carries)."""
    now = int(time.time())
    customer = f"cus_bench{run}{n % 500}"
    return {
        "id": f"evt_bench{run}{n}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": now,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "invoice.payment_failed",
        "data": {
            "object": {
                "id": f"in_bench{run}{n}",
                "object": "invoice",
                "account_country": "US",
                "amount_due": 2900,
                "amount_paid": 0,
                "amount_remaining": 2900,
                "attempt_count": 1,
                "attempted": True,
                "billing_reason": "subscription_cycle",
                "collection_method": "charge_automatically",
                "created": now - 3600,
                "currency": "usd",
                "customer": customer,
                "customer_email": f"{customer}@example.com",
                "customer_name": "Bench Customer",
                "customer_phone": None,
                "customer_address": None,
                "due_date": None,
                "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_bench/{run}{n}",
                "lines": {
                    "object": "list",
                    "data": [{"id": f"il_bench{n}", "object": "line_item", "amount": 2900, "currency": "usd",
                              "description": "1 × Pro (at $29.00 / month)",
                              "pricing": {"type": "price_details", "price_details": {"price": "price_pro", "product": "prod_pro"}},
                              "period": {"start": now - 3600, "end": now + 30 * 86400}, "quantity": 1}],
                    "has_more": False,
                },
                "next_payment_attempt": None,
                "parent": {"type": "subscription_details", "subscription_details": {"subscription": f"sub_bench{run}{n}", "metadata": {}}},
                "period_end": now,
                "period_start": now - 30 * 86400,
                "status": "open",
                "status_transitions": {"finalized_at": now - 3500, "paid_at": None, "voided_at": None},
                "subtotal": 2900,
                "total": 2900,
            }
        },
    }


def failed_payment(run: str, n: int) -> FailedPayment:
    return FailedPayment(
        id=f"in_raw{run}{n}",
        amount=2900,
        currency="usd",
        failed_at=datetime.now(UTC),
        customer=Customer(id=f"cus_raw{run}{n % 500}", email="raw@example.com", name="Bench Customer"),
        subscription_id=f"sub_raw{run}{n}",
        plan="price_pro",
    )


# --- measuring ----------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    events: int
    seconds: float
    latencies: list[float]
    errors: list[str]
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds spent in the phase
    drain: float = 0.0  # seconds from the last answer until every event was carried out

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        """Answer time in ms at percentile p (0-100); nan without answers."""
        seconds = simulate.percentile(self.latencies, p / 100)
        return float("nan") if seconds is None else seconds * 1000


class Poster:
    """A lean HTTP/1.1 keep-alive client: the load generator should not eat the CPU it measures
    (httpx costs a few ms of CPU per request, as much as parts of the service under test)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.idle:
            try:
                return await self._post(self.idle.pop(), path, body, headers)
            except asyncio.IncompleteReadError as error:
                if error.partial:
                    raise
                # The server closed this connection while it sat idle (uvicorn does after 5 s):
                # send again on a new one, as HTTP clients do.
        return await self._post(await asyncio.open_connection(self.host, self.port), path, body, headers)

    async def _post(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str, body: bytes,
                    headers: dict[str, str]) -> tuple[int, bytes]:
        reader, writer = connection
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(head.encode() + body)
        status_line, *lines = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)).decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        if "content-length" not in fields:
            writer.close()
            raise RuntimeError(f"no Content-Length in the answer ({status_line})")
        payload = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), REQUEST_TIMEOUT)
        if fields.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _post(http: Poster, stack: Stack, event: dict[str, Any]) -> tuple[float, str | None]:
    body = json.dumps(event).encode()
    headers = {"Stripe-Signature": signature_header(body, stack.secret), "Content-Type": "application/json"}
    started = time.perf_counter()
    try:
        status, payload = await http.post("/webhooks/stripe", body, headers)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RuntimeError) as error:
        return time.perf_counter() - started, f"{event['id']}: {type(error).__name__} {error}"
    took = time.perf_counter() - started
    if status != 200 or json.loads(payload).get("status") not in ("processed", "accepted"):
        return took, f"{event['id']}: HTTP {status} {payload[:200].decode(errors='replace')}"
    return took, None


class Inbox:
    """The service's inbox, read for this run's events: an event counts once it is carried out."""

    def __init__(self, store: Store, run: str) -> None:
        self.store, self.pattern = store, f"evt_bench{run}%"
        self.failed = 0  # failed rows seen so far: each phase reports its own

    def _counts(self) -> dict[str, int]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(WebhookEvent.status, func.count()).where(WebhookEvent.event_id.like(self.pattern)).group_by(WebhookEvent.status)
            )
            return {status: count for status, count in rows}

    async def drain(self, phase: Phase, answered_at: float) -> Phase:
        """Wait until no event of the run is left `received`; the phase then ends there."""
        deadline = time.perf_counter() + DRAIN_TIMEOUT
        while (counts := await asyncio.to_thread(self._counts)).get("received", 0):
            if time.perf_counter() > deadline:
                phase.errors.append(f"{counts['received']} events still not carried out {DRAIN_TIMEOUT:.0f} s after the last answer")
                break
            await asyncio.sleep(0.02)
        phase.drain = time.perf_counter() - answered_at
        phase.seconds += phase.drain
        if counts.get("failed", 0) > self.failed:
            phase.errors.append(f"{counts['failed'] - self.failed} events failed in the inbox")
        self.failed = counts.get("failed", 0)
        return phase


Send = Callable[[Any], Awaitable[tuple[float, str | None]]]  # one item -> (seconds it took, error)


async def closed_loop(name: str, items: list[Any], concurrency: int, send: Send) -> Phase:
    """`concurrency` senders, each sending its next item once the previous one is answered."""
    queue = iter(items)
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        for item in queue:
            took, error = await send(item)
            latencies.append(took)
            if error:
                errors.append(error)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Phase(name, len(items), time.perf_counter() - started, latencies, errors)


async def open_loop(name: str, items: list[Any], rate: float, send: Send) -> Phase:
    """Item i is sent at i/rate seconds, whatever the earlier ones are doing."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks = []
    for i, item in enumerate(items):
        delay = began + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(item)))
    results = await asyncio.gather(*tasks)
    return Phase(name, len(items), loop.time() - began, [t for t, _ in results], [e for _, e in results if e])


def _raw_start(client: Any, version: str) -> Send:
    """The webhook's signal-with-start, straight to Temporal."""

    async def send(payment: FailedPayment) -> tuple[float, str | None]:
        started = time.perf_counter()
        try:
            await start_journey(client, payment, policy_version=version, event_id=f"evt_{payment.id}")
        except Exception as error:  # reported, not hidden
            return time.perf_counter() - started, f"{payment.id}: {error}"
        return time.perf_counter() - started, None

    return send


async def webhook_phase(name: str, http: Poster, stack: Stack, inbox: Inbox, events: list[dict[str, Any]], concurrency: int) -> Phase:
    phase = await closed_loop(name, events, concurrency, lambda event: _post(http, stack, event))
    return await inbox.drain(phase, time.perf_counter())


async def raw_phase(name: str, client: Any, payments: list[FailedPayment], version: str, concurrency: int) -> Phase:
    return await closed_loop(name, payments, concurrency, _raw_start(client, version))


async def paced_phase(http: Poster, stack: Stack, inbox: Inbox, events: list[dict[str, Any]], rate: float) -> Phase:
    phase = await open_loop(f"webhook paced at {rate:g}/s", events, rate, lambda event: _post(http, stack, event))
    return await inbox.drain(phase, time.perf_counter())


async def paced_raw_phase(client: Any, payments: list[FailedPayment], version: str, rate: float) -> Phase:
    """The same open loop, straight to Temporal: what the server alone does at this rate."""
    return await open_loop(f"raw paced at {rate:g}/s", payments, rate, _raw_start(client, version))


def _merge(name: str, phases: list[Phase]) -> Phase:
    cpu: dict[str, float] = {}
    for p in phases:
        for key, value in p.cpu.items():
            cpu[key] = cpu.get(key, 0.0) + value
    return Phase(name, sum(p.events for p in phases), sum(p.seconds for p in phases),
                 [x for p in phases for x in p.latencies], [x for p in phases for x in p.errors], cpu,
                 sum(p.drain for p in phases))


class CpuMeter:
    """CPU seconds (user + system) of the benchmark and of the processes it started (Linux /proc)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.processes = processes
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def sample(self) -> dict[str, float]:
        values = {"bench": time.process_time()}
        for name, pid in self.processes.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            values[name] = (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        return values

    async def measure(self, work) -> Phase:
        before = self.sample()
        phase = await work
        after = self.sample()
        phase.cpu = {k: after[k] - before[k] for k in after if k in before}
        return phase


@asynccontextmanager
async def _http(stack: Stack) -> AsyncIterator[Poster]:
    poster = Poster(stack.http_url)
    try:
        yield poster
    finally:
        await poster.close()


def _table(phases: list[Phase]) -> str:
    names = [n for n in ("temporal", "http", "bench") if any(n in p.cpu for p in phases)]
    rows = [("phase", "events", "seconds", "events/s", "p50 ms", "p99 ms", "max ms", "drain s", "errors", *(f"cpu {n} ms/ev" for n in names))]
    for p in phases:
        cpu = tuple(f"{p.cpu[n] / p.events * 1000:.1f}" if n in p.cpu else "-" for n in names)
        rows.append((p.name, str(p.events), f"{p.seconds:.2f}", f"{p.rate:.0f}", f"{p.percentile(50):.1f}",
                     f"{p.percentile(99):.1f}", f"{p.percentile(100):.1f}", f"{p.drain:.2f}", str(len(p.errors)), *cpu))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    stack = await start_stack(workdir)
    try:
        return await measure(args, stack)
    finally:
        _stop(stack.processes)


async def measure(args: argparse.Namespace, stack: Stack) -> int:
    run_id = uuid.uuid4().hex[:8]
    store = Store.from_settings(stack.settings)
    try:
        return await _measure(args, stack, store, run_id)
    finally:
        store.dispose()


async def _measure(args: argparse.Namespace, stack: Stack, store: Store, run_id: str) -> int:
    version = policy_for_new_journeys(store).version
    inbox = Inbox(store, run_id)
    client = await asyncio.wait_for(connect(stack.settings), 10)
    counter = iter(range(10**9))
    events = lambda k: [failure_event(run_id, next(counter)) for _ in range(k)]  # noqa: E731
    payments = lambda k: [failed_payment(run_id, next(counter)) for _ in range(k)]  # noqa: E731
    meter = CpuMeter(stack.pids)

    async def webhooks(name: str, k: int) -> Phase:
        # Connections per phase: uvicorn closes those idle for 5 s (while raw phases run).
        async with _http(stack) as http:
            return await meter.measure(webhook_phase(name, http, stack, inbox, events(k), args.concurrency))

    await webhooks("warm-up", WARM_UP)
    await raw_phase("warm-up", client, payments(WARM_UP), version, args.concurrency)
    half, rest = args.events // 2, args.events - args.events // 2
    w1 = await webhooks("webhook", half)
    r1 = await meter.measure(raw_phase("raw", client, payments(half), version, args.concurrency))
    r2 = await meter.measure(raw_phase("raw", client, payments(rest), version, args.concurrency))
    w2 = await webhooks("webhook", rest)
    webhook = _merge(f"webhook, signed, via HTTP (C={args.concurrency})", [w1, w2])
    raw = _merge(f"raw start_workflow (C={args.concurrency})", [r1, r2])
    async with _http(stack) as http:
        paced = await meter.measure(paced_phase(http, stack, inbox, events(args.paced_events), args.rate))
    paced_raw = await meter.measure(paced_raw_phase(client, payments(args.paced_events), version, args.rate))
    # The same at a quarter of the rate: the latency of one event when the box is not saturated.
    async with _http(stack) as http:
        light = await meter.measure(paced_phase(http, stack, inbox, events(max(1, args.paced_events // 4)), args.rate / 4))
    ratio = webhook.rate / raw.rate if raw.rate else 0.0
    p99 = paced.percentile(99)
    print(f"dunning webhook ingest benchmark — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.machine()}")
    for note in stack.notes:
        print(note)
    print()
    print(_table([webhook, raw, paced, paced_raw, light]))
    print()
    print(f"ratio webhook/raw: {ratio:.2f} (target >= 0.8) {'ok' if ratio >= 0.8 else 'MISSED'}")
    print(f"p99 at {args.rate:g} events/s: {p99:.1f} ms (target <= 50 ms) {'ok' if p99 <= 50 else 'MISSED'}; "
          f"raw starts alone at that rate: p99 {paced_raw.percentile(99):.1f} ms")
    failures = webhook.errors + raw.errors + paced.errors + paced_raw.errors + light.errors
    for error in failures[:10]:
        print(f"error: {error}")
    print(json.dumps({"webhook_rate": round(webhook.rate, 1), "raw_rate": round(raw.rate, 1), "ratio": round(ratio, 3), "p99_ms": round(p99, 1)}))
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per throughput measurement (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--rate", type=float, default=100.0, help="events/s of the paced latency run (default 100)")
    parser.add_argument("--paced-events", type=int, default=1000, help="events of the paced run (default 1000)")
    args = parser.parse_args(argv)
    for name in ("events", "concurrency", "paced_events"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rate <= 0:
        parser.error("--rate must be positive")
    with _workdir() as workdir:
        return asyncio.run(run(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
