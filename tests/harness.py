"""An isolated engine for tests: its own store, sandbox gateway, outbox, task queue and worker."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.outbox import OutboxSender
from activities.sandbox import SandboxGateway
from dunning.enums import Channel
from dunning.policy import parse_policy
from dunning.scenarios import Scenario
from dunning.store import Store
from dunning.triggers import start_journey
from worker import build_worker


@dataclass
class Harness:
    """One isolated engine: its own store, sandbox gateway, outbox and task queue."""

    client: Client
    store: Store
    gateway: SandboxGateway
    task_queue: str
    policy_version: str

    async def start(self, scenario: Scenario, event_id: str | None = None) -> WorkflowHandle:
        self.gateway.register(scenario)
        return await start_journey(
            self.client,
            scenario.to_failed_payment(),
            policy_version=self.policy_version,
            event_id=event_id or f"evt_{scenario.id}",
            task_queue=self.task_queue,
        )

    def publish(self, text: str) -> str:
        policy = parse_policy(text)
        return self.store.publish_policy(name=policy.name, yaml_text=text, published_by="test").version

    @asynccontextmanager
    async def worker(self) -> AsyncIterator[Worker]:
        worker = build_worker(
            self.client,
            store=self.store,
            gateway=self.gateway,
            senders={channel: OutboxSender(channel, self.store) for channel in Channel},
            task_queue=self.task_queue,
            executor=ThreadPoolExecutor(8),
        )
        async with worker:
            yield worker


def make_harness(client: Client, tmp_path: Path, policy_text: str) -> Harness:
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    harness = Harness(
        client=client,
        store=store,
        gateway=SandboxGateway(tmp_path / "sandbox.db", public_url="http://127.0.0.1:8000"),
        task_queue=f"test-{uuid.uuid4().hex[:8]}",
        policy_version="",
    )
    harness.policy_version = harness.publish(policy_text)
    return harness
