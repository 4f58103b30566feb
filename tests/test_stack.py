"""The stack supervisor (`python -m dunning.stack`, i.e. `make up`) end to end."""

from __future__ import annotations

import asyncio
import io
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus

from dunning import search_attributes
from dunning.config import Settings
from dunning.stack import ROOT, port_in_use, run_stack, search_attribute_flags, temporal_binary

STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0

WORKER_STANDIN = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    while True:
        time.sleep(0.1)
except KeyboardInterrupt:
    pass
"""

HTTP_STANDIN = """
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["DUNNING_HTTP_PORT"])), Handler)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
"""

CRASHING_WORKER = """
import sys, time
time.sleep(1)
print("worker boom: cannot open policy", file=sys.stderr)
sys.exit(3)
"""

# Reports what the supervisor's environment lets a child see, then exits.
WORKER_REPORTING_ATTRIBUTES = """
import asyncio, os
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client

async def main():
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    print("attributes:", ",".join(sorted(k for k in listed.custom_attributes if k.startswith("Dunning"))))

asyncio.run(main())
"""

# Runs the supervisor with stand-in children, as `python -m dunning.stack` would.
STANDIN_RUNNER = """
import sys
from dunning.config import Settings
from dunning.stack import run_stack
sys.exit(run_stack(Settings(), [sys.executable, sys.argv[1]], [sys.executable, sys.argv[2]]))
"""

PROBE_WORKFLOW_ID = "stack-resume-probe"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_script(directory: Path, name: str, source: str) -> str:
    path = directory / name
    path.write_text(source)
    return str(path)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


async def custom_search_attributes(address: str) -> dict[str, int]:
    client = await Client.connect(address)
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    return dict(listed.custom_attributes)


def expected_search_attributes() -> dict[str, int]:
    return {key.name: key.indexed_value_type for key in search_attributes.ALL}


@dataclass
class Ports:
    http: int
    temporal: int
    ui: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.temporal}"

    def all(self) -> list[int]:
        return [self.http, self.temporal, self.ui]


@pytest.fixture
def ports() -> Ports:
    return Ports(free_port(), free_port(), free_port())


class StackProcess:
    """`python -m dunning.stack` (or a stand-in runner) as a subprocess, output captured."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail(f"stack exited ({self.proc.wait()}) before {text!r}:\n{self.output()}")
            self.lines.append(line)
            if text in line:
                return
        pytest.fail(f"no {text!r} within {timeout}s:\n{self.output()}")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stack still running {STOP_TIMEOUT}s after SIGINT:\n{self.output()}")
        self.drain()
        return code

    def drain(self) -> None:
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stack_env(ports: Ports, data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"TEMPORAL_ADDRESS", "STRIPE_API_KEY", "DUNNING_API_TOKEN"}
    }
    env.update(
        DUNNING_DATA_DIR=str(data_dir),
        DUNNING_HTTP_PORT=str(ports.http),
        TEMPORAL_DEV_PORT=str(ports.temporal),
        TEMPORAL_UI_PORT=str(ports.ui),
        PYTHONUNBUFFERED="1",
    )
    return env


def stack_command(variant: str, tmp_path: Path) -> list[str]:
    if variant == "real":
        return [sys.executable, "-m", "dunning.stack"]
    return [
        sys.executable,
        write_script(tmp_path, "runner.py", STANDIN_RUNNER),
        write_script(tmp_path, "worker_standin.py", WORKER_STANDIN),
        write_script(tmp_path, "http_standin.py", HTTP_STANDIN),
    ]


@pytest.fixture
def start_stack() -> Iterator:
    started: list[StackProcess] = []

    def start(cmd: list[str], env: dict[str, str]) -> StackProcess:
        stack = StackProcess(cmd, env)
        started.append(stack)
        return stack

    yield start
    for stack in started:  # only reached with a live stack when a test already failed
        stack.kill()


async def start_probe_workflow(address: str) -> None:
    client = await Client.connect(address)
    # No worker polls this queue, so the execution simply stays open in the store.
    await client.start_workflow("StackResumeProbe", id=PROBE_WORKFLOW_ID, task_queue="stack-probe")


async def probe_status(address: str) -> WorkflowExecutionStatus | None:
    client = await Client.connect(address)
    return (await client.get_workflow_handle(PROBE_WORKFLOW_ID).describe()).status


@pytest.mark.parametrize("variant", ["stand-ins", "real"])
def test_stack_starts_stops_on_sigint_and_resumes(variant, tmp_path, ports, start_stack):
    data_dir = tmp_path / "data"
    env = stack_env(ports, data_dir)
    cmd = stack_command(variant, tmp_path)

    first = start_stack(cmd, env)
    first.wait_for("Press Ctrl-C to stop", STARTUP_TIMEOUT)
    banner = first.output()
    assert f"http://127.0.0.1:{ports.ui}" in banner
    assert f"http://127.0.0.1:{ports.http}/docs" in banner
    assert str(data_dir.resolve()) in banner
    assert "SANDBOX gateway (no STRIPE_API_KEY)" in banner
    assert httpx.get(f"http://127.0.0.1:{ports.http}/healthz", timeout=5).status_code == 200
    token = (data_dir / "api-token").read_text().strip()
    assert token in banner
    if variant == "real":
        # The banner's token is the one the HTTP service enforces.
        journeys = f"http://127.0.0.1:{ports.http}/api/journeys"
        assert httpx.get(journeys, timeout=5).status_code == 401
        authorized = httpx.get(journeys, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert authorized.status_code == 200, authorized.text
    attrs = asyncio.run(custom_search_attributes(ports.address))
    assert expected_search_attributes().items() <= attrs.items()
    asyncio.run(start_probe_workflow(ports.address))

    assert first.interrupt() == 0, first.output()
    assert [p for p in ports.all() if listening(p)] == []
    assert (data_dir / "temporal.db").is_file()
    assert (data_dir / "logs" / "temporal.log").is_file()

    second = start_stack(cmd, env)
    second.wait_for("Press Ctrl-C to stop", STARTUP_TIMEOUT)
    assert httpx.get(f"http://127.0.0.1:{ports.http}/healthz", timeout=5).status_code == 200
    # Same SQLite file: the execution from the first run is still there.
    assert asyncio.run(probe_status(ports.address)) == WorkflowExecutionStatus.RUNNING
    attrs = asyncio.run(custom_search_attributes(ports.address))
    assert expected_search_attributes().items() <= attrs.items()
    assert second.interrupt() == 0, second.output()
    assert [p for p in ports.all() if listening(p)] == []


def test_child_crash_stops_stack_and_names_child(tmp_path, ports):
    settings = Settings(
        dunning_data_dir=tmp_path / "data",
        dunning_http_port=ports.http,
        temporal_dev_port=ports.temporal,
        temporal_ui_port=ports.ui,
        temporal_address=None,
    )
    out = io.StringIO()
    started = time.monotonic()
    code = run_stack(
        settings,
        worker_cmd=[sys.executable, write_script(tmp_path, "worker_crash.py", CRASHING_WORKER)],
        http_cmd=[sys.executable, write_script(tmp_path, "http_standin.py", HTTP_STANDIN)],
        out=out,
    )
    text = out.getvalue()
    assert code == 1, text
    assert time.monotonic() - started < STARTUP_TIMEOUT
    assert "worker exited unexpectedly (exit code 3)" in text
    assert "worker boom: cannot open policy" in text
    assert "worker boom" in (tmp_path / "data" / "logs" / "worker.log").read_text()
    assert [p for p in ports.all() if listening(p)] == []


def test_external_cluster_gets_search_attributes_and_no_dev_server(tmp_path, ports):
    # A bare in-memory server with none of our attributes stands in for a real cluster.
    cluster = subprocess.Popen(
        [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
         "--port", str(ports.temporal), "--log-level", "error"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        settings = Settings(
            dunning_data_dir=tmp_path / "data",
            dunning_http_port=ports.http,
            temporal_address=ports.address,
        )
        out = io.StringIO()
        worker = "import time; time.sleep(3)"  # exits 0 on its own: the stack must still fail
        code = run_stack(
            settings,
            worker_cmd=[sys.executable, "-c", worker],
            http_cmd=[sys.executable, write_script(tmp_path, "http_standin.py", HTTP_STANDIN)],
            out=out,
        )
        text = out.getvalue()
        assert code == 1, text
        assert f"external cluster at {ports.address}" in text
        assert "starting Temporal dev server" not in text
        assert "worker exited unexpectedly (exit code 0)" in text
        attrs = asyncio.run(custom_search_attributes(ports.address))
        assert expected_search_attributes().items() <= attrs.items()
        assert not (tmp_path / "data" / "temporal.db").exists()
    finally:
        cluster.send_signal(signal.SIGINT)
        cluster.wait(timeout=STOP_TIMEOUT)


def test_existing_db_without_attributes_gets_them_on_start(tmp_path, ports):
    # start-dev applies --search-attribute only when it creates the SQLite file.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    old = subprocess.Popen(
        [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
         "--port", str(ports.temporal), "--db-filename", str(data_dir / "temporal.db"),
         "--log-level", "error"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not listening(ports.temporal):
            assert time.monotonic() < deadline and old.poll() is None
            time.sleep(0.2)
        assert "DunningStage" not in asyncio.run(custom_search_attributes(ports.address))
    finally:
        old.send_signal(signal.SIGINT)
        old.wait(timeout=STOP_TIMEOUT)

    settings = Settings(
        dunning_data_dir=data_dir,
        dunning_http_port=ports.http,
        temporal_dev_port=ports.temporal,
        temporal_ui_port=ports.ui,
        temporal_address=None,
    )
    out = io.StringIO()
    code = run_stack(
        settings,
        worker_cmd=[sys.executable, write_script(tmp_path, "worker_report.py", WORKER_REPORTING_ATTRIBUTES)],
        http_cmd=[sys.executable, write_script(tmp_path, "http_standin.py", HTTP_STANDIN)],
        out=out,
    )
    text = out.getvalue()
    assert code == 1, text  # the stand-in worker exits on its own
    assert "attributes: " + ",".join(sorted(expected_search_attributes())) in text
    assert [p for p in ports.all() if listening(p)] == []


def test_busy_port_fails_before_starting_anything(tmp_path, ports):
    settings = Settings(
        dunning_data_dir=tmp_path / "data",
        dunning_http_port=ports.http,
        temporal_dev_port=ports.temporal,
        temporal_ui_port=ports.ui,
        temporal_address=None,
    )
    out = io.StringIO()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.http))
        holder.listen()
        assert port_in_use(ports.http)
        code = run_stack(settings, ["true"], ["true"], out=out)
    assert code == 1
    assert f"{ports.http} (DUNNING_HTTP_PORT)" in out.getvalue()
    assert "starting Temporal" not in out.getvalue()


def test_search_attribute_flags_cover_all_attributes():
    flags = search_attribute_flags()
    assert flags[0::2] == ["--search-attribute"] * len(search_attributes.ALL)
    assert flags[1::2] == [
        "DunningStage=Keyword",
        "DunningCustomerId=Keyword",
        "DunningAmountDue=Int",
        "DunningCurrency=Keyword",
        "DunningDeclineClass=Keyword",
    ]
