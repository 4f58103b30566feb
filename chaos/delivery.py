"""Delivering signed events to POST /webhooks/stripe the way Stripe does: every event several times,
and again after any answer that is not 2xx (Stripe redelivers with backoff for days; here a few
seconds apart, for a bounded time)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from activities.sandbox import SandboxGateway
from chaos.scenarios import Case, Delivery, body
from dunning.stripe_events import signature_header

REDELIVER_AFTER = (0.5, 1.0, 2.0, 3.0)  # then every 3 s
SPACED_GAP = 0.4  # seconds between copies delivered one after another


@dataclass
class DeliveryLog:
    accepted: int = 0  # 2xx answers: deliveries that count
    duplicates: int = 0  # of those, answered as a repeat of an event already received
    redelivered: int = 0  # non-2xx answers or connection errors that made us deliver again
    rejected: list[str] = field(default_factory=list)  # 4xx: a signed, well-formed event refused
    gave_up: list[str] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # the service's `status` field


async def wait_until_due(case: Case, delivery: Delivery, gateway: SandboxGateway) -> None:
    """Wait until `delivery` is due, then do the customer's part of it (add a card) if it has one."""
    wait = (case.start + timedelta(seconds=delivery.after) - datetime.now(UTC)).total_seconds()
    if wait > 0:
        await asyncio.sleep(wait)
    if delivery.attach:
        await asyncio.to_thread(gateway.attach_payment_method, case.invoice_id, delivery.attach)


class Deliverer:
    def __init__(self, url: str, secret: str, *, give_up_after: float = 240.0) -> None:
        self.url = url.rstrip("/") + "/webhooks/stripe"
        self.secret = secret
        self.give_up_after = give_up_after
        self.log = DeliveryLog()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))

    async def close(self) -> None:
        await self._http.aclose()

    async def deliver(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """One delivery: POST until a 2xx answer (redelivering after 5xx and connection errors)."""
        payload = body(event)
        deadline = time.monotonic() + self.give_up_after
        attempt = 0
        while True:
            signature = signature_header(payload, self.secret)  # signed at each send, as Stripe does
            try:
                response = await self._http.post(
                    self.url, content=payload, headers={"Stripe-Signature": signature, "Content-Type": "application/json"}
                )
            except httpx.HTTPError:
                response = None
            if response is not None and 200 <= response.status_code < 300:
                answer = response.json()
                self.log.accepted += 1
                self.log.statuses[answer.get("status", "?")] += 1
                if answer.get("status") == "duplicate":
                    self.log.duplicates += 1
                return answer
            if response is not None and 400 <= response.status_code < 500:
                self.log.rejected.append(f"{event['id']} ({event['type']}): {response.status_code} {response.text[:300]}")
                return None
            if time.monotonic() > deadline:
                what = f"HTTP {response.status_code}" if response is not None else "no connection"
                self.log.gave_up.append(f"{event['id']} ({event['type']}): {what} for {self.give_up_after:.0f} s")
                return None
            self.log.redelivered += 1
            await asyncio.sleep(REDELIVER_AFTER[min(attempt, len(REDELIVER_AFTER) - 1)])
            attempt += 1

    async def deliver_copies(self, event: dict[str, Any], copies: int, how: str) -> None:
        """`copies` deliveries of one event: all at once ("together") or one after another ("spaced")."""
        if how == "together":
            await asyncio.gather(*(self.deliver(event) for _ in range(copies)))
            return
        for n in range(copies):
            if n:
                await asyncio.sleep(SPACED_GAP)
            await self.deliver(event)
