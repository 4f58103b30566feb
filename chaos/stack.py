"""The whole stack as separate processes, under the caller's control: a Temporal dev server on a
SQLite file (WAL) in its own data dir, N worker processes (`python worker.py`) and the HTTP service
(`python starter.py`), all on free loopback ports.

Unlike `dunning.stack` (which stops everything when a child dies), this harness lets the caller
kill a worker with SIGKILL, start it again, and stop and restart the Temporal server on the same
SQLite file. Children inherit no provider keys, so payments go to the sandbox gateway and messages
to the outbox. Every child dies with the harness: `close()` kills what is left, and each child has
PR_SET_PDEATHSIG so that even a harness killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from temporalio.client import Client

from dunning.codec import new_key_line
from dunning.config import Settings
from dunning.policies import publish_configured_policy
from dunning.stack import ensure_search_attributes, temporal_dev_command
from dunning.store import Store
from dunning.temporal import connect

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "chaos" / "policy.yaml"
WEBHOOK_SECRET_PREFIX = "whsec_chaos_"

TEMPORAL_READY_TIMEOUT = 60.0
PROCESS_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
READY_MARKER = "worker polling task queue"  # worker.py logs it once its Worker runs
# Variables a child must not inherit: provider keys would send real charges and messages.
_INHERITED_PREFIXES = ("STRIPE_", "SENDGRID_", "TWILIO_", "TEMPORAL_", "DUNNING_")
_INHERITED_NAMES = ("DATABASE_URL", "DATABASE_URL_FILE")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def identity(pid: int) -> str:
    """The Temporal SDK's default worker identity for a process (`<pid>@<hostname>`)."""
    return f"{pid}@{socket.gethostname()}"


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size of a live process: Linux keeps it as VmHWM in /proc/<pid>/status.
    Elsewhere, psutil's current RSS when psutil is installed (callers sample it and keep the max)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional; not a dependency of the project

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # not installed, or the process is gone
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a live process used so far (/proc/<pid>/stat), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Child:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_offset: int = 0  # where the current process's output begins in the log
    peak_rss: list[int] = field(default_factory=list)  # one entry per process this child had

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"=== {self.name} start {self.starts + 1} at {datetime.now().isoformat(timespec='seconds')} ===\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1

    def remember_peak_rss(self) -> None:
        if self.alive:
            rss = peak_rss_bytes(self.pid)
            if rss is not None:
                self.peak_rss.append(rss)

    def kill(self) -> None:
        """SIGKILL, as `kill -9` would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Ask politely, then kill after STOP_TIMEOUT."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def output_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class StackFailed(RuntimeError):
    """A process of the stack did not come up; the message carries its last output."""


class ProcessStack:
    """Temporal dev server + `workers` worker processes + the HTTP service, on `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 2,
        policy: Path = POLICY,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.policy = policy.resolve()
        self.temporal_port = free_port()
        self.ui_port = free_port()
        self.http_port = free_port()
        self.api_token = secrets.token_urlsafe(24)
        self.webhook_secret = WEBHOOK_SECRET_PREFIX + secrets.token_hex(16)
        self.codec_keys = new_key_line("chaos1")
        self.settings = Settings(
            dunning_data_dir=self.data_dir,
            dunning_http_port=self.http_port,
            temporal_dev_port=self.temporal_port,
            temporal_ui_port=self.ui_port,
            temporal_address=f"127.0.0.1:{self.temporal_port}",
            dunning_policy=self.policy,
            dunning_api_token=self.api_token,
            stripe_webhook_secret=self.webhook_secret,
            dunning_codec_keys=self.codec_keys,
        )
        env = self._child_env()
        dev_settings = self.settings.model_copy(update={"temporal_address": None})
        temporal_cmd = temporal_dev_command(dev_settings, self.data_dir) + ["--headless"]
        self.temporal = Child("temporal", temporal_cmd, {k: v for k, v in env.items() if k != "TEMPORAL_ADDRESS"}, self.log_dir / "temporal.log")
        self.workers = [
            Child(f"worker-{n + 1}", [sys.executable, str(ROOT / "worker.py")], env, self.log_dir / f"worker-{n + 1}.log")
            for n in range(workers)
        ]
        self.http = Child("http", [sys.executable, str(ROOT / "starter.py")], env, self.log_dir / "http.log")
        self.client: Client | None = None
        self.store: Store | None = None

    # -- environment ------------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_INHERITED_PREFIXES) and k not in _INHERITED_NAMES
        }
        env.update(
            TEMPORAL_ADDRESS=self.settings.temporal_target,
            TEMPORAL_NAMESPACE=self.settings.temporal_namespace,
            DUNNING_DATA_DIR=str(self.data_dir),
            DUNNING_HTTP_PORT=str(self.http_port),
            DUNNING_POLICY=str(self.policy),
            DUNNING_API_TOKEN=self.api_token,
            DUNNING_PUBLIC_URL=f"http://127.0.0.1:{self.http_port}",
            DUNNING_CODEC_KEYS=self.codec_keys,
            STRIPE_WEBHOOK_SECRET=self.webhook_secret,
            DUNNING_WORKER_METRICS_PORT="off",  # two workers on one machine; not measured here
            PYTHONUNBUFFERED="1",
        )
        return env

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sandbox_path(self) -> Path:
        return self.data_dir / "sandbox.db"

    @property
    def children(self) -> list[Child]:
        return [self.http, *self.workers, self.temporal]

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The store and the policy first, once: workers and the service then find them in place
        # instead of migrating one SQLite file from three processes at the same moment.
        self.store = Store.from_settings(self.settings)
        self.store.upgrade()
        publish_configured_policy(self.store, self.settings)
        await self.start_temporal()
        for worker in self.workers:
            worker.start()
        self.http.start()
        await asyncio.gather(self.wait_for_http(), self.wait_for_workers())

    async def start_temporal(self) -> None:
        self.temporal.start()
        self.client = await self._connect()
        await ensure_search_attributes(self.client, self.settings.temporal_namespace)

    async def _connect(self) -> Client:
        deadline = time.monotonic() + TEMPORAL_READY_TIMEOUT
        last: BaseException | None = None
        while time.monotonic() < deadline:
            self._check_alive(self.temporal)
            try:
                client = await asyncio.wait_for(connect(self.settings), 5)
                await asyncio.wait_for(client.count_workflows(), 5)  # visibility answers too
                return client
            except Exception as error:  # not listening yet
                last = error
                await asyncio.sleep(0.3)
        raise StackFailed(f"Temporal did not answer within {TEMPORAL_READY_TIMEOUT:.0f} s ({last})\n{self.temporal.tail()}")

    async def stop_temporal(self) -> float:
        """SIGTERM the server (SIGKILL after STOP_TIMEOUT); seconds it took to exit."""
        began = time.monotonic()
        await asyncio.to_thread(self.temporal.stop, signal.SIGTERM)
        return time.monotonic() - began

    async def restart_temporal(self, down_for: float = 0.0) -> float:
        """Stop the server, wait `down_for`, start it on the same SQLite file; seconds it was unreachable."""
        began = time.monotonic()
        await self.stop_temporal()
        if down_for:
            await asyncio.sleep(down_for)
        await self.start_temporal()
        return time.monotonic() - began

    def kill_worker(self, index: int) -> int:
        """kill -9 one worker; returns the pid it had."""
        worker = self.workers[index]
        pid = worker.pid
        worker.remember_peak_rss()
        worker.kill()
        return pid

    async def start_worker(self, index: int) -> None:
        self.workers[index].start()
        await self.wait_for_workers([index])

    def _check_alive(self, child: Child) -> None:
        if child.proc is not None and child.proc.poll() is not None:
            raise StackFailed(f"{child.name} exited (code {child.proc.returncode}); last output:\n{child.tail()}")

    async def wait_for_http(self) -> None:
        deadline = time.monotonic() + PROCESS_READY_TIMEOUT
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                self._check_alive(self.http)
                try:
                    if (await http.get(f"{self.http_url}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.3)
        raise StackFailed(f"the HTTP service did not answer within {PROCESS_READY_TIMEOUT:.0f} s\n{self.http.tail()}")

    async def wait_for_workers(self, indexes: list[int] | None = None) -> None:
        """Until each worker (its current process) logged that it polls the task queue."""
        wanted = [self.workers[i] for i in (indexes if indexes is not None else range(len(self.workers)))]
        deadline = time.monotonic() + PROCESS_READY_TIMEOUT
        while time.monotonic() < deadline:
            for worker in wanted:
                self._check_alive(worker)
            if all(READY_MARKER in worker.output_since_start() for worker in wanted):
                return
            await asyncio.sleep(0.2)
        names = ", ".join(w.name for w in wanted)
        raise StackFailed(f"{names} did not start polling within {PROCESS_READY_TIMEOUT:.0f} s\n" + "\n".join(w.tail() for w in wanted))

    def worker_peak_rss(self) -> list[int | None]:
        """Per worker slot: the largest peak RSS of its processes so far (live ones read now)."""
        result: list[int | None] = []
        for worker in self.workers:
            worker.remember_peak_rss()
            result.append(max(worker.peak_rss) if worker.peak_rss else None)
        return result

    def close(self) -> None:
        """Stop everything: HTTP and workers together (SIGTERM, then SIGKILL after STOP_TIMEOUT),
        the server last, the same way."""
        for child in self.children:
            if child.alive:
                child.remember_peak_rss()
        for group in ([self.http, *self.workers], [self.temporal]):
            for child in group:
                if child.alive:
                    child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in group:
                if child.proc is None:
                    continue
                try:
                    child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
        if self.store is not None:
            self.store.dispose()
