"""A guided demo for newcomers: a handful of failed payments on the sandbox gateway, each with a
different story, running on the compressed demo policy so the whole set ends in about four minutes.

The stories are scenario data (the simulator's shape); the driver plays the customers: when a
story says the customer reacts after a reminder, it sends the same signal or update a webhook
would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from activities.sandbox import SandboxGateway
from dunning.journey import JourneyStatus, OpsAction, PaymentMethodUpdated, PaymentSucceeded
from dunning.scenarios import Scenario
from dunning.triggers import start_journey

INSUFFICIENT = {"decline_code": "insufficient_funds", "network_decline_code": "51"}
LOST = {"decline_code": "lost_card", "network_decline_code": "41"}
DO_NOT_HONOR_MC = {"decline_code": "do_not_honor", "network_advice_code": "02"}
EXPIRED = {"decline_code": "expired_card", "network_decline_code": "54"}


@dataclass(frozen=True)
class Story:
    key: str
    title: str
    customer: dict
    cards: list[dict]
    decline: dict
    amount: int = 2900
    currency: str = "usd"
    reaction: dict | None = None  # the simulator's customer_response shape


def stories(now: datetime) -> list[Story]:
    def until(seconds: int) -> str:
        return (now + timedelta(seconds=seconds)).isoformat()

    return [
        Story(
            "funds",
            "insufficient funds, recovers on a later retry",
            {"name": "Maria", "email": "maria@example.com", "timezone": "Europe/Bucharest", "locale": "ro"},
            [{"id": "pm_funds", "brand": "visa", "default": True,
              "behavior": {"default": "succeeded", "windows": [{"from": until(-60), "until": until(40), "outcome": INSUFFICIENT}]}}],
            INSUFFICIENT,
        ),
        Story(
            "backup",
            "lost card: never retried, the backup card pays",
            {"name": "Kenji", "email": "kenji@example.jp", "phone": "+81312345678", "locale": "ja"},
            [{"id": "pm_lost", "brand": "visa", "default": True, "behavior": {"default": LOST}},
             {"id": "pm_backup", "brand": "mastercard", "behavior": {"default": "succeeded"}}],
            LOST,
            amount=4800,
            currency="jpy",
        ),
        Story(
            "update",
            "expired card: the customer adds a new one after the first reminder",
            {"name": "Amira", "email": "amira@example.com", "phone": "+201001234567", "locale": "ar"},
            [{"id": "pm_expired", "brand": "visa", "default": True, "behavior": {"default": EXPIRED}}],
            EXPIRED,
            reaction={"after_messages": 2, "delay": "PT10S", "action": "update_payment_method",
                      "new_payment_method": {"id": "pm_new", "brand": "visa", "behavior": {"default": "succeeded"}}},
        ),
        Story(
            "oob",
            "pays by bank transfer after a reminder (out of band)",
            {"name": "John", "email": "john@example.com", "phone": "+14155550100", "timezone": "America/New_York"},
            [{"id": "pm_oob", "brand": "visa", "default": True, "behavior": {"default": INSUFFICIENT}}],
            INSUFFICIENT,
            reaction={"after_messages": 3, "delay": "PT5S", "action": "pay_out_of_band"},
        ),
        Story(
            "mac",
            "Mastercard 'try again later' (MAC 02): waits 72 h, so only reminders fit the demo",
            {"name": "Sofia", "email": "sofia@example.com", "timezone": "Europe/Madrid"},
            [{"id": "pm_mac", "brand": "mastercard", "default": True, "behavior": {"default": DO_NOT_HONOR_MC}}],
            DO_NOT_HONOR_MC,
        ),
        Story(
            "handoff",
            "never recovers: restricted, cancelled, handed off",
            {"name": "Alex", "email": "alex@example.com", "phone": "+447911123456", "timezone": "Europe/London"},
            [{"id": "pm_handoff", "brand": "visa", "default": True, "behavior": {"default": INSUFFICIENT}}],
            INSUFFICIENT,
        ),
    ]


def scenario(story: Story, now: datetime, run: str) -> Scenario:
    """Ids carry the run tag so `dunning demo` can be run again on the same data dir."""

    def tagged(card: dict) -> dict:
        return {**card, "id": f"{card['id']}_{run}"}

    reaction = story.reaction
    if reaction and reaction.get("new_payment_method"):
        reaction = {**reaction, "new_payment_method": tagged(reaction["new_payment_method"])}
    cards = [tagged(card) for card in story.cards]
    return Scenario.model_validate(
        {
            "id": f"in_demo_{story.key}_{run}",
            "amount": story.amount,
            "currency": story.currency,
            "failed_at": now.isoformat(),
            "customer": {"id": f"cus_demo_{story.key}_{run}", **story.customer},
            "payment_methods": cards,
            "initial_decline": {"payment_method": cards[0]["id"], **story.decline},
            "subscription_id": f"sub_demo_{story.key}_{run}",
            "customer_response": reaction,
        }
    )


@dataclass
class Running:
    story: Story
    scenario: Scenario
    handle: WorkflowHandle
    status: JourneyStatus | None = None
    reacted: bool = False


async def start(
    client: Client, gateway: SandboxGateway, policy_version: str, *, task_queue: str, now: datetime | None = None
) -> list[Running]:
    now = now or datetime.now(timezone.utc)
    run = now.strftime("%H%M%S")
    running = []
    for story in stories(now):
        case = scenario(story, now, run)
        gateway.register(case)
        handle = await start_journey(
            client, case.to_failed_payment(), policy_version=policy_version,
            event_id=f"demo:{case.id}", task_queue=task_queue,
        )
        running.append(Running(story, case, handle))
    return running


async def step(running: list[Running], gateway: SandboxGateway, now: datetime) -> bool:
    """Refresh every journey and play the customers; True while any journey is still open."""
    for item in running:
        try:
            item.status = await item.handle.query("status", result_type=JourneyStatus)
        except RPCError:
            continue  # a busy worker answers the next poll; the journey itself is unaffected
        if item.status is None or item.status.stage.terminal or item.reacted:
            continue
        response = item.scenario.customer_response
        delivered = [m for m in item.status.messages if m.status == "sent"]
        if response is None or len(delivered) < response.after_messages:
            continue
        if now < delivered[response.after_messages - 1].at + response.delay:
            continue
        item.reacted = True
        await react(item, gateway)
    return any(item.status is None or item.status.ended_at is None for item in running)


async def react(item: Running, gateway: SandboxGateway) -> None:
    response = item.scenario.customer_response
    event_id = f"demo:{item.scenario.id}:{response.action}"
    match response.action:
        case "update_payment_method":
            method = gateway.attach_payment_method(item.scenario.id, response.new_payment_method.id)
            await item.handle.execute_update(
                "payment_method_updated",
                PaymentMethodUpdated(event_id=event_id, payment_method=method, source="customer (demo)"),
                id=event_id,
            )
        case "pay_out_of_band":
            await item.handle.signal("payment_succeeded", PaymentSucceeded(event_id=event_id, source="bank transfer (demo)"))
        case "dispute":
            await item.handle.signal("pause", OpsAction(reason="dispute opened (demo)", event_id=event_id))
        case "cancel":
            await item.handle.signal("cancel", OpsAction(reason="customer cancelled (demo)", event_id=event_id))


async def wait_for_all(running: list[Running], gateway: SandboxGateway, *, poll: float = 1.0, on_tick=None) -> None:
    while await step(running, gateway, datetime.now(timezone.utc)):
        if on_tick is not None:
            on_tick(running)
        await asyncio.sleep(poll)
    if on_tick is not None:
        on_tick(running)
