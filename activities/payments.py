"""Payment activities: every charge goes through the store's card ledger, then the gateway.

Exactly once per attempt: the ledger row is keyed by (journey, attempt number) and the gateway
call carries the idempotency key `<journey id>:attempt:<n>`, never the activity attempt, so a
retry after a lost response finds the same reservation and the gateway returns the same charge.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning.budgets import card_key, earliest_attempt
from dunning.declines import classify
from dunning.journey_state import CardAttempt
from dunning.models import ChargeOutcome, Decline, FailedPayment
from dunning.ports import (
    COLLECTION_CONTEXT_ACTIVITY,
    ChargeRequest,
    ChargeResult,
    CollectionContext,
    EscalationRequest,
    PaymentGateway,
    ReconcileRequest,
)
from dunning.rules import RetryLimits
from dunning.store import CardAttemptRecord, RecordNotFound, Store

if TYPE_CHECKING:
    from dunning.config import Settings

logger = logging.getLogger(__name__)

PERMANENT_PAYMENT_ERROR = "PermanentPaymentError"


def permanent_error(message: str) -> ApplicationError:
    """An error no retry can fix (bad request, bad credentials): Temporal must not retry it."""
    return ApplicationError(message, type=PERMANENT_PAYMENT_ERROR, non_retryable=True)


def _decline_of(row: CardAttemptRecord) -> Decline | None:
    if row.status != "declined":
        return None  # succeeded, or the outcome is not known yet: budgets count it as an attempt
    return Decline(
        payment_method=row.payment_method_id,
        decline_code=row.decline_code,
        network_decline_code=row.network_decline_code,
        advice_code=row.advice_code,
        network_advice_code=row.network_advice_code,
    )


def counted_attempts(rows: list[CardAttemptRecord]) -> list[CardAttemptRecord]:
    # An "error" row is a request the gateway rejected outright: nothing reached the network.
    return [row for row in rows if row.status != "error"]


def to_card_attempt(row: CardAttemptRecord) -> CardAttempt:
    return CardAttempt(
        at=row.at,
        card_key=row.card_key,
        brand=row.brand,
        amount=row.amount,
        currency=row.currency,
        journey_id=row.journey_id,
        payment_method_id=row.payment_method_id or row.card_key,
        decline=_decline_of(row),
    )


class PaymentActivities:
    def __init__(self, gateway: PaymentGateway, store: Store) -> None:
        self.gateway = gateway
        self.store = store

    @activity.defn(name=COLLECTION_CONTEXT_ACTIVITY)
    def collection_context(self, payment: FailedPayment) -> CollectionContext:
        return self.gateway.collection_context(payment)

    @activity.defn(name="payments.charge")
    def charge(self, request: ChargeRequest) -> ChargeResult:
        method = request.payment_method
        reservation = CardAttemptRecord(
            journey_id=request.journey_id,
            attempt_number=request.attempt_number,
            card_key=card_key(method),
            brand=method.brand,
            payment_method_id=method.id,
            amount=request.amount,
            currency=request.currency,
            at=request.at,
            status="reserved",
            idempotency_key=request.idempotency_key,
            step_id=request.step_id,
        )

        def within_budget(history: list[CardAttemptRecord]) -> bool:
            decision = earliest_attempt(
                card=method,
                amount=request.amount,
                currency=request.currency,
                journey_id=request.journey_id,
                history=[to_card_attempt(row) for row in counted_attempts(history)],
                not_before=request.at,
                limits=request.limits,
            )
            return decision.allowed_at is not None and decision.allowed_at <= request.at

        try:
            granted, history = self.store.reserve_card_attempt(reservation, within_budget)
        except ValueError as error:  # the attempt number is already reserved for another card
            raise permanent_error(f"cannot reserve attempt {request.idempotency_key}: {error}") from error
        if not granted:
            ledger = tuple(
                to_card_attempt(row)
                for row in counted_attempts(history)
                if row.journey_id != request.journey_id
            )
            activity.logger.info(
                "attempt %s on %s denied: the card's network budget is used by other journeys",
                request.idempotency_key,
                card_key(method),
            )
            return ChargeResult(budget_denied=True, ledger=ledger)

        try:
            outcome = self.gateway.charge(request)
        except ApplicationError as error:
            if error.non_retryable:
                self._mark_error(request)
            raise
        self._record(request.journey_id, request.attempt_number, method.brand, outcome, request.limits)
        return ChargeResult(outcome=outcome)

    @activity.defn(name="payments.read_back")
    def read_back(self, request: ReconcileRequest) -> ChargeOutcome:
        outcome = self.gateway.read_back(request)
        rows = [r for r in self.store.attempts_for_journey(request.journey_id) if r.attempt_number == request.attempt_number]
        if not rows:
            activity.logger.warning("read back %s#%s: no ledger row to update", request.journey_id, request.attempt_number)
            return outcome
        try:
            self._record(request.journey_id, request.attempt_number, rows[0].brand, outcome, RetryLimits())
        except RecordNotFound:  # deleted meanwhile (retention): the outcome still goes back
            activity.logger.warning("read back %s#%s: ledger row vanished", request.journey_id, request.attempt_number)
        return outcome

    @activity.defn(name="payments.escalate")
    def escalate(self, request: EscalationRequest) -> None:
        self.gateway.escalate(request)

    def _mark_error(self, request: ChargeRequest) -> None:
        """Frees the budget of a request the gateway refused, unless it already has a real outcome
        (e.g. the key was reused with other parameters after a charge was made)."""
        rows = self.store.attempts_for_journey(request.journey_id)
        if any(r.attempt_number == request.attempt_number and r.status == "reserved" for r in rows):
            self.store.record_attempt_outcome(request.journey_id, request.attempt_number, status="error")

    def _record(
        self,
        journey_id: str,
        attempt_number: int,
        brand: str | None,
        outcome: ChargeOutcome,
        limits: RetryLimits,
    ) -> None:
        decline = outcome.decline or Decline()
        decline_class = None
        if outcome.status == "declined":
            decline_class = classify(decline, brand, limits.mastercard_02_delay).decline_class.value
        self.store.record_attempt_outcome(
            journey_id,
            attempt_number,
            status=outcome.status,
            decline_code=decline.decline_code,
            network_decline_code=decline.network_decline_code,
            advice_code=decline.advice_code,
            network_advice_code=decline.network_advice_code,
            decline_class=decline_class,
            charge_id=outcome.charge_id,
        )


def build_gateway(
    settings: Settings, data_dir: str | Path | None = None, *, public_url: str | None = None
) -> PaymentGateway:
    """Stripe when STRIPE_API_KEY is set, else the embedded sandbox (loudly, so nobody mistakes it).

    The sandbox keeps its state in `<data_dir>/sandbox.db` (default $DUNNING_DATA_DIR) and links
    customers to `<public_url>/sandbox/pay/<payment>` (default $DUNNING_PUBLIC_URL, as messages do).
    """
    if settings.stripe_api_key:
        from activities.stripe_gateway import StripeGateway

        return StripeGateway.from_settings(settings)
    from activities.sandbox import SandboxGateway

    path = Path(data_dir if data_dir is not None else settings.dunning_data_dir) / "sandbox.db"
    url = public_url or os.environ.get("DUNNING_PUBLIC_URL") or f"http://localhost:{settings.dunning_http_port}"
    message = f"SANDBOX payment gateway (no STRIPE_API_KEY): no real charges; state in {path}"
    logger.warning(message)
    print(message, flush=True)
    return SandboxGateway(path, public_url=url)
