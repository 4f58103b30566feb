"""Prometheus metrics: the engine's own figures at `GET /metrics` and the worker's SDK metrics.

`/metrics` (HTTP service, ops bearer token required) is computed from the store at every scrape
by a custom collector, so any number of HTTP processes report the same numbers. All gauges:
rows change status (an attempt goes from reserved to declined), so they are counts of what the
store holds now, not counters.

The worker exposes the Temporal SDK's own metrics (task latencies, poll results, slots...,
prefixed `temporal_`) on `DUNNING_WORKER_METRICS_PORT` (default 9464; `off` disables) of
`DUNNING_WORKER_METRICS_HOST` (default 127.0.0.1; 0.0.0.0 in a container), without auth, at any
path, e.g. http://127.0.0.1:9464/metrics.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from dunning.enums import Stage
from dunning.reports import read_snapshot
from dunning.store import Store
from dunning.store.schema import CardAttempt, Journey, Message

logger = logging.getLogger(__name__)

WORKER_METRICS_PORT_ENV = "DUNNING_WORKER_METRICS_PORT"
WORKER_METRICS_HOST_ENV = "DUNNING_WORKER_METRICS_HOST"  # e.g. 0.0.0.0 in a container
DEFAULT_WORKER_METRICS_PORT = 9464
NO_CLASS = "none"  # label value for attempts without a decline class (successes, in flight)


class StoreCollector(Collector):
    """Reads the store at scrape time. A failed read yields `dunning_store_scrape_success 0`."""

    def __init__(self, store: Store):
        self._store = store

    def describe(self) -> Iterable[Metric]:
        # Names only: registering must not query the database.
        return [_gauge(name, [], []) for name in _FAMILIES]

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            figures = self._read()
        except SQLAlchemyError as exc:
            logger.error("metrics: reading the store failed: %s", exc.__class__.__name__, exc_info=exc)
            figures, success = {}, 0.0
        else:
            success = 1.0
        for name, (labels, samples) in figures.items():
            yield _gauge(name, labels, samples)
        yield GaugeMetricFamily(
            "dunning_store_scrape_success", "1 when the store could be read for this scrape, else 0", value=success
        )
        yield GaugeMetricFamily(
            "dunning_store_scrape_duration_seconds", "time spent reading the store for this scrape",
            value=time.perf_counter() - started,
        )

    def _read(self) -> dict[str, tuple[list[str], list[tuple[tuple[str, ...], float]]]]:
        j, ca, m = Journey.__table__.c, CardAttempt.__table__.c, Message.__table__.c
        with read_snapshot(self._store) as session:
            stages = dict.fromkeys((stage.value for stage in Stage), 0)
            stages.update(dict(session.execute(select(j.stage, func.count()).group_by(j.stage)).all()))
            attempts = session.execute(
                select(ca.status, ca.decline_class, func.count())
                .where(ca.attempt_number >= 1)
                .group_by(ca.status, ca.decline_class)
                .order_by(ca.status, ca.decline_class)
            ).all()
            messages = session.execute(
                select(m.channel, m.status, func.count()).group_by(m.channel, m.status).order_by(m.channel, m.status)
            ).all()
            recovered = session.execute(
                select(j.currency, func.sum(j.recovered_amount)).group_by(j.currency).order_by(j.currency)
            ).all()
        webhooks = self._store.webhook_event_counts()
        return {
            "dunning_journeys": (["stage"], [((stage,), float(n)) for stage, n in stages.items()]),
            "dunning_card_attempts": (
                ["status", "decline_class"],
                [((status, decline_class or NO_CLASS), float(n)) for status, decline_class, n in attempts],
            ),
            "dunning_messages": (["channel", "status"], [((c, s), float(n)) for c, s, n in messages]),
            "dunning_recovered_amount_minor_units": (
                ["currency"], [((currency,), float(amount or 0)) for currency, amount in recovered]
            ),
            "dunning_webhook_events": (["status"], [((s,), float(n)) for s, n in webhooks.items()]),
        }


def _gauge(name: str, labels: list[str], samples: list[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    metric = GaugeMetricFamily(name, _FAMILIES[name], labels=labels)
    for values, value in samples:
        metric.add_metric(list(values), value)
    return metric


# Name -> help text of the gauges `StoreCollector._read` fills.
_FAMILIES = {
    "dunning_journeys": "journeys in the store by stage",
    "dunning_card_attempts": "retry attempts (not the failure that opened a journey) by outcome and decline class",
    "dunning_messages": "messages by channel and delivery status",
    "dunning_recovered_amount_minor_units": (
        "amount recovered, in the currency's minor units (cents), per currency; never summed across currencies"
    ),
    "dunning_webhook_events": "webhook inbox events by processing status",
}


def build_router(services):
    """`GET /metrics` (Prometheus text format), behind the ops bearer token."""
    from dunning.api.app import require_token  # app imports this module

    registry = CollectorRegistry(auto_describe=True)
    registry.register(StoreCollector(services.store))
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", dependencies=[Depends(require_token(services))])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


# -- the worker's Temporal SDK metrics ----------------------------------------------------------


def worker_metrics_address(env: Mapping[str, str] | None = None) -> str | None:
    """<DUNNING_WORKER_METRICS_HOST>:<DUNNING_WORKER_METRICS_PORT> (127.0.0.1:9464); None when `off`."""
    source = os.environ if env is None else env
    raw = source.get(WORKER_METRICS_PORT_ENV, "").strip()
    if raw.lower() == "off":
        return None
    if not raw:
        raw = str(DEFAULT_WORKER_METRICS_PORT)
    elif not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ValueError(f"{WORKER_METRICS_PORT_ENV}={raw!r}: use a TCP port (1-65535) or `off`")
    host = source.get(WORKER_METRICS_HOST_ENV, "").strip() or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{WORKER_METRICS_HOST_ENV}={host!r}: use an IP address to bind, e.g. 127.0.0.1 or 0.0.0.0 in a container"
        ) from None
    return f"[{ip}]:{int(raw)}" if ip.version == 6 else f"{ip}:{int(raw)}"


def worker_metrics_url(env: Mapping[str, str] | None = None) -> str:
    """For banners: where the worker serves SDK metrics, `off`, or what is wrong with the setting."""
    try:
        address = worker_metrics_address(env)
    except ValueError as exc:
        return str(exc)
    return "off" if address is None else f"http://{address}/metrics"


def worker_runtime(address: str):
    """A Temporal runtime exporting the SDK's metrics for Prometheus on `address`."""
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    except ValueError as exc:  # e.g. the port is taken
        raise RuntimeError(
            f"cannot serve worker metrics on {address}: {exc}; set {WORKER_METRICS_PORT_ENV} to a free port or `off`"
        ) from exc


def install_worker_metrics(env: Mapping[str, str] | None = None) -> str | None:
    """Make the worker's clients export SDK metrics (call before connecting); returns the address.

    A port set explicitly must work (else RuntimeError). The default port may be taken by another
    stack's worker on the same machine: then the worker runs without SDK metrics and says so.
    """
    from temporalio.runtime import Runtime

    source = os.environ if env is None else env
    address = worker_metrics_address(source)
    if address is None:
        return None
    try:
        runtime = worker_runtime(address)
    except RuntimeError as exc:
        if source.get(WORKER_METRICS_PORT_ENV, "").strip():
            raise
        logger.warning("Temporal SDK metrics are off: %s", exc)
        return None
    Runtime.set_default(runtime)
    return address
