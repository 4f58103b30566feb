"""Activities on the engine's own store: policies, the cross-journey card ledger, the projection."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic_core import to_jsonable_python
from temporalio import activity

from activities.payments import counted_attempts, to_card_attempt
from dunning.budgets import card_key, journey_card_keys
from dunning.enums import Channel, Stage
from dunning.journey_state import CardAttempt
from dunning.journey import JourneyStatus
from dunning.models import Decline, Frozen, PaymentMethod
from dunning.policy import Policy, parse_policy
from dunning.ports import JourneyContext, idempotency_key
from dunning.store import Store
from dunning.store.records import CardAttemptRecord, JourneyRecord

LEDGER_LOOKBACK = timedelta(days=31)  # the longest network window (30 days) plus a margin


class OpenJourney(Frozen):
    journey_id: str
    customer_id: str
    amount: int
    currency: str
    payment_methods: tuple[PaymentMethod, ...]
    initial_method: PaymentMethod | None
    initial_decline: Decline
    failed_at: datetime


class JournalActivities:
    def __init__(self, store: Store):
        self._store = store

    @activity.defn(name="journal.load_policy")
    def load_policy(self, version: str) -> Policy:
        record = self._store.get_policy(version)
        if record is None:
            raise LookupError(f"policy version {version!r} is not published; run `dunning policy publish`")
        return parse_policy(record.yaml_text, version)

    @activity.defn(name="journal.open_journey")
    def open_journey(self, request: OpenJourney) -> JourneyContext:
        """Record the initial failure in the card ledger and read what other journeys did to these cards."""
        failed_at = request.failed_at
        if request.initial_method is not None:
            method = request.initial_method
            self._store.reserve_card_attempt(
                CardAttemptRecord(
                    journey_id=request.journey_id,
                    attempt_number=0,
                    card_key=card_key(method),
                    brand=method.brand,
                    payment_method_id=method.id,
                    amount=request.amount,
                    currency=request.currency,
                    at=failed_at,
                    status="declined",
                    decline_code=request.initial_decline.decline_code,
                    network_decline_code=request.initial_decline.network_decline_code,
                    advice_code=request.initial_decline.advice_code,
                    network_advice_code=request.initial_decline.network_advice_code,
                    idempotency_key=idempotency_key(request.journey_id, 0),
                ),
                check=lambda history: True,  # the gateway already made this attempt
            )
        ledger: list[CardAttempt] = []
        for key in journey_card_keys(request.payment_methods, request.initial_method):
            for row in counted_attempts(self._store.card_history(key, failed_at - LEDGER_LOOKBACK)):
                if row.journey_id != request.journey_id:
                    ledger.append(to_card_attempt(row))
        opted_out = sorted(
            Channel(c) for c in self._store.opted_out_channels(request.customer_id) if c in set(Channel)
        )
        return JourneyContext(ledger=tuple(ledger), opted_out=tuple(opted_out))

    @activity.defn(name="journal.project")
    def project(self, status: JourneyStatus) -> None:
        next_action = status.next_action
        recovered = status.stage is Stage.recovered
        winning = next((a for a in status.attempts if a.status == "succeeded"), None)
        self._store.upsert_journey(
            JourneyRecord(
                journey_id=status.journey_id,
                payment_reference=status.payment_reference,
                payment_kind=status.payment_kind,
                customer_id=status.customer_id,
                stage=status.stage.value,
                amount=status.amount,
                currency=status.currency,
                decline_class=status.decline_class,
                policy_version=status.policy_version,
                segment=status.segment,
                variant=status.variant,
                started_at=status.started_at,
                updated_at=status.timeline[-1].at if status.timeline else status.started_at,
                ended_at=status.ended_at,
                next_action=f"{next_action.kind} {next_action.step_id or ''}".strip() if next_action else None,
                next_action_at=next_action.at if next_action else None,
                recovered_amount=status.amount if recovered else 0,
                recovered_at=status.recovered_at,
                recovered_step=winning.step_id if winning else None,
                recovered_via=("retry" if winning else "out_of_band") if recovered else None,
                attempts_count=sum(1 for a in status.attempts if a.number > 0),
                messages_count=sum(1 for m in status.messages if m.status == "sent"),
                timeline=to_jsonable_python(status.timeline),
            )
        )
