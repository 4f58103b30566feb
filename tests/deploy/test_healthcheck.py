"""The container health checks and the namespace init script, against a real dev server."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from dunning import search_attributes
from tests.support import BIN, ROOT, binary, start_dev_server

sys.path.insert(0, str(ROOT / "deploy"))
import healthcheck  # noqa: E402  (deploy/healthcheck.py is a script, not a package module)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


async def test_worker_check_sees_this_hosts_poller_only_while_it_polls(dev_env, tmp_path, harness_factory, default_policy_text):
    harness = harness_factory(dev_env.client, tmp_path, default_policy_text)
    me = socket.gethostname()
    async with harness.worker():
        for _ in range(100):  # the server lists a poller once its first poll arrives
            found = await healthcheck.pollers(dev_env.client, harness.task_queue)
            if found:
                break
            await asyncio.sleep(0.1)
        now = datetime.now(timezone.utc)
        assert healthcheck.polling_here(found, me, now)
        assert not healthcheck.polling_here(found, "another-pod", now), "a poller of another pod does not count"
        assert not healthcheck.polling_here(found, me, now + timedelta(minutes=10)), "stale pollers do not count"
    empty = await healthcheck.pollers(dev_env.client, "no-worker-here")
    assert not healthcheck.polling_here(empty, me, datetime.now(timezone.utc))


async def test_worker_check_when_temporal_is_down(monkeypatch, tmp_path):
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("DUNNING_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(healthcheck, "TIMEOUT", 3.0)
    ok, detail = await healthcheck.check_worker(strict=False)
    assert ok and "not this worker's fault" in detail, "liveness: an outage restarts no worker"
    ok, detail = await healthcheck.check_worker(strict=True)
    assert not ok and "unreachable" in detail, "readiness: not ready without Temporal"


def test_http_checks_fail_on_a_closed_port():
    port = free_port()
    assert healthcheck.check_tcp(port)[0] is False
    assert healthcheck.check_http(port)[0] is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert healthcheck.check_tcp(server.getsockname()[1])[0] is True


async def test_init_script_creates_the_namespace_and_search_attributes(dev_env):
    address = dev_env.client.service_client.config.target_host
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "dunning-init"}
    script = str(ROOT / "deploy/temporal/init-namespace.sh")
    for _ in range(2):  # idempotent
        run = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    listed = subprocess.run(
        [binary("temporal"), "operator", "search-attribute", "list", "--namespace", "dunning-init", "--address", address],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    for key in search_attributes.ALL:
        type_name = {"KEYWORD": "Keyword", "INT": "Int"}[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
        assert re.search(rf"^\s*{key.name}\s+{type_name}\s*$", listed, re.M), f"{key.name} missing:\n{listed}"
    assert "search attribute DunningStage exists" in run.stdout, "the second run found everything in place"
