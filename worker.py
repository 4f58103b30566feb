"""The Temporal worker: runs DunningWorkflow and its activities (`python worker.py`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from activities.collections import CollectionsActivities
from activities.journal import JournalActivities
from activities.messaging import MessagingActivities, build_senders
from activities.payments import PaymentActivities, build_gateway
from dunning import redaction
from dunning.api.metrics import install_worker_metrics
from dunning.collections import CollectionsConfig
from dunning.config import TASK_QUEUE, Settings, get_settings
from dunning.enums import Channel
from dunning.policies import publish_configured_policy
from dunning.ports import MessageSender, PaymentGateway
from dunning.store import Store
from dunning.temporal import connect
from workflows.dunning import DunningWorkflow
from workflows.export import CollectionsExportWorkflow
from workflows.sandbox import workflow_runner

ACTIVITY_THREADS = 32  # activities do blocking I/O (SQL, provider SDKs)


def build_worker(
    client: Client,
    *,
    store: Store,
    gateway: PaymentGateway,
    senders: dict[Channel, MessageSender],
    task_queue: str = TASK_QUEUE,
    executor: ThreadPoolExecutor | None = None,
    collections: CollectionsActivities | None = None,
) -> Worker:
    payments = PaymentActivities(gateway, store)
    # Collections settings are checked here: a bad one stops the worker at start, with its fix.
    collections = collections or CollectionsActivities(store, CollectionsConfig.from_settings(get_settings()))
    messaging = MessagingActivities(senders, store)
    journal = JournalActivities(store)
    activities: Sequence = (
        payments.collection_context,
        payments.charge,
        payments.read_back,
        payments.escalate,
        messaging.send,
        journal.load_policy,
        journal.open_journey,
        journal.project,
        collections.place,
        collections.build_export,
        collections.deliver_export,
    )
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[DunningWorkflow, CollectionsExportWorkflow],
        activities=list(activities),
        activity_executor=executor or ThreadPoolExecutor(ACTIVITY_THREADS),
        workflow_runner=workflow_runner(),
    )


async def run(settings: Settings) -> None:
    store = Store.from_settings(settings)
    store.upgrade()
    publish_configured_policy(store, settings)
    # Before connecting: the client's runtime is the one that exports the SDK's metrics.
    metrics_address = install_worker_metrics()
    if metrics_address:
        logging.getLogger("worker").info("Temporal SDK metrics at http://%s/metrics", metrics_address)
    client = await connect(settings)
    worker = build_worker(
        client,
        store=store,
        gateway=build_gateway(settings),
        senders=build_senders(settings),
        collections=CollectionsActivities(store, CollectionsConfig.from_settings(settings)),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with worker:
        logging.getLogger("worker").info("worker polling task queue %r on %s", TASK_QUEUE, settings.temporal_target)
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.install()  # no email address or phone number reaches a log
    asyncio.run(run(get_settings()))
