"""`/metrics` computed from the store (SQLite and PostgreSQL), and the worker's Temporal SDK metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dunning.api.app import create_app
from dunning.api.metrics import (
    StoreCollector,
    install_worker_metrics,
    worker_metrics_address,
    worker_metrics_url,
)
from dunning.config import Settings
from dunning.store import Store
from tests.dunning.test_reports import seed
from tests.support import ROOT

TOKEN = "metrics-token-77"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:  # noqa: F811
    store = Store(db_url)
    store.upgrade()
    seed(store)
    for event_id, status in (("evt_1", "processed"), ("evt_2", "processed"), ("evt_3", "failed"), ("evt_4", None)):
        store.record_webhook_event(event_id=event_id, source="stripe", type="invoice.payment_failed", payload={})
        if status:
            store.mark_webhook_event(event_id, status, error="boom" if status == "failed" else None)
    yield store
    store.dispose()


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_are_the_stores_figures(store: Store, tmp_path: Path):
    app = create_app(Settings(dunning_data_dir=tmp_path, temporal_address="127.0.0.1:9", dunning_api_token=TOKEN), store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        assert (await http.get("/metrics")).status_code == 401
        response = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "# TYPE dunning_journeys gauge" in response.text
    found = samples(response.text)
    assert found["dunning_journeys"] == {
        (("stage", "retrying"),): 1, (("stage", "awaiting_customer"),): 0, (("stage", "paused"),): 0,
        (("stage", "recovered"),): 5, (("stage", "cancelled"),): 1, (("stage", "handed_off"),): 1,
    }
    assert found["dunning_card_attempts"] == {
        (("decline_class", "insufficient_funds"), ("status", "declined")): 3,
        (("decline_class", "temporary"), ("status", "declined")): 3,
        (("decline_class", "none"), ("status", "declined")): 2,
        (("decline_class", "none"), ("status", "succeeded")): 3,
    }
    assert found["dunning_messages"] == {
        (("channel", "email"), ("status", "sent")): 11,
        (("channel", "in_app"), ("status", "failed")): 1,
        (("channel", "in_app"), ("status", "sent")): 1,
        (("channel", "sms"), ("status", "sent")): 2,
        (("channel", "sms"), ("status", "skipped")): 1,
    }
    assert found["dunning_recovered_amount_minor_units"] == {
        (("currency", "eur"),): 8000, (("currency", "jpy"),): 0, (("currency", "usd"),): 5000,
    }
    assert found["dunning_webhook_events"] == {
        (("status", "received"),): 1, (("status", "processed"),): 2, (("status", "ignored"),): 0, (("status", "failed"),): 1,
    }
    assert found["dunning_store_scrape_success"] == {(): 1}
    assert found["dunning_store_scrape_duration_seconds"][()] > 0


def test_an_unreadable_store_is_a_failed_scrape_not_an_error(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated: no tables
    registry = CollectorRegistry()
    registry.register(StoreCollector(store))
    found = samples(generate_latest(registry).decode())
    assert found == {"dunning_store_scrape_success": {(): 0}, "dunning_store_scrape_duration_seconds": found["dunning_store_scrape_duration_seconds"]}
    store.dispose()


def test_worker_metrics_port_setting():
    assert worker_metrics_address({}) == "127.0.0.1:9464"
    assert worker_metrics_address({"DUNNING_WORKER_METRICS_PORT": " 9500 "}) == "127.0.0.1:9500"
    assert worker_metrics_address({"DUNNING_WORKER_METRICS_PORT": "OFF"}) is None
    assert install_worker_metrics({"DUNNING_WORKER_METRICS_PORT": "off"}) is None
    assert worker_metrics_url({"DUNNING_WORKER_METRICS_PORT": "off"}) == "off"
    assert worker_metrics_url({}) == "http://127.0.0.1:9464/metrics"
    assert worker_metrics_address({"DUNNING_WORKER_METRICS_HOST": "0.0.0.0"}) == "0.0.0.0:9464"
    assert worker_metrics_address({"DUNNING_WORKER_METRICS_HOST": "::", "DUNNING_WORKER_METRICS_PORT": "9500"}) == "[::]:9500"
    with pytest.raises(ValueError, match=r"DUNNING_WORKER_METRICS_HOST='worker': use an IP address to bind"):
        worker_metrics_address({"DUNNING_WORKER_METRICS_HOST": "worker"})
    for bad in ("0", "70000", "http", "-1"):
        with pytest.raises(ValueError, match=r"DUNNING_WORKER_METRICS_PORT=.*use a TCP port \(1-65535\) or `off`"):
            worker_metrics_address({"DUNNING_WORKER_METRICS_PORT": bad})


def test_a_taken_worker_metrics_port(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    from dunning.api import metrics

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        # Set explicitly: the worker must not start without the metrics it was asked for.
        with pytest.raises(RuntimeError, match="set DUNNING_WORKER_METRICS_PORT to a free port or `off`"):
            install_worker_metrics({"DUNNING_WORKER_METRICS_PORT": str(port)})
        # The default taken (another stack's worker on this machine): run on, without them, and say so.
        monkeypatch.setattr(metrics, "DEFAULT_WORKER_METRICS_PORT", port)
        with caplog.at_level(logging.WARNING, logger="dunning.api.metrics"):
            assert install_worker_metrics({}) is None
        assert f"Temporal SDK metrics are off: cannot serve worker metrics on 127.0.0.1:{port}" in caplog.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_worker_process_serves_temporal_sdk_metrics(time_env, tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": time_env.client.service_client.config.target_host,
        "DUNNING_DATA_DIR": str(tmp_path),
        "DUNNING_WORKER_METRICS_PORT": str(port),
        "DUNNING_POLICY": str(ROOT / "policies" / "default.yaml"),
    }
    env.pop("DATABASE_URL", None)  # the worker's own SQLite store in tmp_path
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        text, deadline = "", time.monotonic() + 60
        async with httpx.AsyncClient(timeout=5) as http:
            # Pollers report once the worker is up; until then the port may not even listen.
            while "temporal_num_pollers" not in text:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no SDK metrics on port {port} (worker exit {proc.poll()}):\n{log.read_text()[-3000:]}")
                try:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.3)
        assert "temporal_request" in text and 'task_queue="dunning"' in text
        assert f"Temporal SDK metrics at http://127.0.0.1:{port}/metrics" in log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

