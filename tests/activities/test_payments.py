"""Payment activities on a real store and the sandbox gateway, run as Temporal activities."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments import PERMANENT_PAYMENT_ERROR, PaymentActivities, build_gateway
from activities.sandbox import SandboxFault, SandboxGateway
from dunning.enums import Action
from dunning.rules import RetryLimits
from dunning.config import Settings
from dunning.declines import classify
from dunning.models import Decline, PaymentMethod
from dunning.ports import ChargeRequest, EscalationRequest, ReconcileRequest
from dunning.scenarios import Scenario
from dunning.store import Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
VISA = PaymentMethod(id="pm_visa", brand="visa", fingerprint="fp_shared", default=True)


def request(
    payment: str = "in_1001",
    *,
    attempt: int = 1,
    at: datetime = T0,
    method: PaymentMethod = VISA,
    limits: RetryLimits = RetryLimits(),
) -> ChargeRequest:
    return ChargeRequest(
        journey_id=f"dunning-{payment}",
        attempt_number=attempt,
        payment_reference=payment,
        payment_kind="invoice",
        payment_method=method,
        amount=2500,
        currency="usd",
        at=at,
        limits=limits,
    )


def env(attempt: int = 1) -> ActivityEnvironment:
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(environment.info, attempt=attempt)
    return environment


@pytest.fixture
def activities(sandbox: SandboxGateway, store: Store) -> PaymentActivities:
    return PaymentActivities(sandbox, store)


def register(
    sandbox: SandboxGateway,
    make_scenario: Callable[..., Scenario],
    payment: str,
    behavior: dict,
    method: PaymentMethod = VISA,
) -> None:
    sandbox.register(make_scenario(payment, methods=[{**method.model_dump(mode="json"), "behavior": behavior}]))


@pytest.mark.parametrize("fault", ["timeout", "server_error"])
def test_retry_after_transient_fault_charges_once(
    activities: PaymentActivities, sandbox: SandboxGateway, store: Store, make_scenario, fault: str
) -> None:
    register(sandbox, make_scenario, "in_1001", {"default": "succeeded"})
    sandbox.fail_next(1, fault)
    with pytest.raises(SandboxFault):
        env(attempt=1).run(activities.charge, request())
    # the reservation survives the fault, so the retry is not budget-checked twice
    assert [r.status for r in store.attempts_for_journey("dunning-in_1001")] == ["reserved"]
    result = env(attempt=2).run(activities.charge, request())
    assert result.outcome.status == "succeeded" and not result.budget_denied
    assert sandbox.count_charges("dunning-in_1001") == 1
    assert list(sandbox.charges_by_key()) == ["dunning-in_1001:attempt:1"]
    (row,) = store.attempts_for_journey("dunning-in_1001")
    assert (row.status, row.charge_id, row.idempotency_key) == (
        "succeeded",
        result.outcome.charge_id,
        "dunning-in_1001:attempt:1",
    )
    # A third delivery (e.g. the workflow replays the activity) still makes no second charge.
    assert env(attempt=3).run(activities.charge, request()) == result
    assert sandbox.count_charges("dunning-in_1001") == 1


def test_decline_is_a_result_with_every_field_recorded(
    activities: PaymentActivities, sandbox: SandboxGateway, store: Store, make_scenario
) -> None:
    decline = {
        "decline_code": "insufficient_funds",
        "network_decline_code": "51",
        "advice_code": "try_again_later",
        "network_advice_code": None,
    }
    register(sandbox, make_scenario, "in_1001", {"default": decline})
    result = env().run(activities.charge, request())
    assert result.outcome.status == "declined"
    assert result.outcome.decline == Decline(payment_method="pm_visa", **decline)
    (row,) = store.attempts_for_journey("dunning-in_1001")
    assert row.status == "declined"
    assert (row.decline_code, row.network_decline_code, row.advice_code, row.network_advice_code) == (
        "insufficient_funds", "51", "try_again_later", None,
    )
    assert row.decline_class == classify(result.outcome.decline, "visa").decline_class.value
    assert row.decline_class == "insufficient_funds"
    assert (row.card_key, row.brand, row.amount, row.at) == ("fp_shared", "visa", 2500, T0)


def test_budget_denied_across_two_journeys_on_one_card(
    activities: PaymentActivities, sandbox: SandboxGateway, store: Store, make_scenario
) -> None:
    # Visa allows 1 + N attempts per card and amount in 30 days; with N = 1 two journeys on the
    # same card (same fingerprint, different payment method ids) share two attempts.
    limits = RetryLimits(visa_reattempts_30d=1)
    other_pm = VISA.model_copy(update={"id": "pm_visa_b"})
    register(sandbox, make_scenario, "in_a", {"default": {"decline_code": "do_not_honor"}})
    register(sandbox, make_scenario, "in_b", {"default": "succeeded"}, other_pm)
    assert env().run(activities.charge, request("in_a", attempt=1, limits=limits)).outcome.status == "declined"
    assert env().run(activities.charge, request("in_a", attempt=2, at=T0 + timedelta(days=2), limits=limits)).outcome
    denied = env().run(
        activities.charge, request("in_b", attempt=1, at=T0 + timedelta(days=3), method=other_pm, limits=limits)
    )
    assert denied.budget_denied and denied.outcome is None
    assert [(e.journey_id, e.at, e.card_key) for e in denied.ledger] == [
        ("dunning-in_a", T0, "fp_shared"),
        ("dunning-in_a", T0 + timedelta(days=2), "fp_shared"),
    ]
    assert denied.ledger[0].decline.decline_code == "do_not_honor"
    assert sandbox.count_charges("dunning-in_b") == 0
    assert store.attempts_for_journey("dunning-in_b") == []
    # once the oldest attempt is 30 days old the card has budget again
    later = env().run(
        activities.charge, request("in_b", attempt=1, at=T0 + timedelta(days=30), method=other_pm, limits=limits)
    )
    assert later.outcome.status == "succeeded"


def test_own_attempts_are_not_reported_as_ledger(
    activities: PaymentActivities, sandbox: SandboxGateway, make_scenario
) -> None:
    limits = RetryLimits(max_attempts_per_payment_method=1)
    register(sandbox, make_scenario, "in_a", {"default": {"decline_code": "do_not_honor"}})
    # The journey's earliest ledger row stands for its initial failure; the cap counts retries.
    env().run(activities.charge, request("in_a", attempt=1, limits=limits))
    env().run(activities.charge, request("in_a", attempt=2, at=T0 + timedelta(days=1), limits=limits))
    denied = env().run(activities.charge, request("in_a", attempt=3, at=T0 + timedelta(days=2), limits=limits))
    assert denied.budget_denied and denied.ledger == ()
    assert sandbox.count_charges("dunning-in_a") == 2


def test_permanent_gateway_error_is_non_retryable(
    activities: PaymentActivities, sandbox: SandboxGateway, store: Store, make_scenario
) -> None:
    register(sandbox, make_scenario, "in_1001", {"default": "succeeded"})
    env().run(activities.charge, request())
    # Same attempt number, other amount: the gateway refuses the reused idempotency key.
    changed = request().model_copy(update={"amount": 9999})
    with pytest.raises(ApplicationError) as caught:
        env().run(activities.charge, changed)
    assert caught.value.non_retryable and caught.value.type == PERMANENT_PAYMENT_ERROR
    assert "idempotency key dunning-in_1001:attempt:1" in str(caught.value)
    # the real outcome of the attempt is kept
    assert [r.status for r in store.attempts_for_journey("dunning-in_1001")] == ["succeeded"]


def test_attempt_number_reused_for_another_card_is_permanent(
    activities: PaymentActivities, sandbox: SandboxGateway, make_scenario
) -> None:
    register(sandbox, make_scenario, "in_1001", {"default": "succeeded"})
    env().run(activities.charge, request())
    other_card = PaymentMethod(id="pm_other", brand="visa", fingerprint="fp_other")
    with pytest.raises(ApplicationError) as caught:
        env().run(activities.charge, request(method=other_card))
    assert caught.value.non_retryable and caught.value.type == PERMANENT_PAYMENT_ERROR
    assert sandbox.count_charges("dunning-in_1001") == 1


def test_read_back_records_the_settled_outcome(
    activities: PaymentActivities, sandbox: SandboxGateway, store: Store, make_scenario
) -> None:
    register(sandbox, make_scenario, "in_1001", {"default": {"decline_code": "expired_card"}})
    sandbox.fail_next(1, "timeout")
    with pytest.raises(SandboxFault):
        env().run(activities.charge, request())
    reconcile = ReconcileRequest(
        journey_id="dunning-in_1001", attempt_number=1, payment_reference="in_1001", payment_kind="invoice"
    )
    outcome = env().run(activities.read_back, reconcile)
    assert outcome.status == "declined" and outcome.decline.decline_code == "expired_card"
    (row,) = store.attempts_for_journey("dunning-in_1001")
    assert (row.status, row.decline_code, row.charge_id) == ("declined", "expired_card", outcome.charge_id)
    assert row.decline_class == classify(outcome.decline, "visa").decline_class.value


def test_collection_context_and_escalation_once(
    activities: PaymentActivities, sandbox: SandboxGateway, make_scenario
) -> None:
    scenario = make_scenario("in_1001", methods=[{"id": "pm_a", "default": True}, {"id": "pm_b"}])
    sandbox.register(scenario)
    context = env().run(activities.collection_context, scenario.to_failed_payment())
    assert [m.id for m in context.payment_methods] == ["pm_a", "pm_b"]
    assert context.update_url == "http://dunning.test/sandbox/pay/in_1001"
    escalation = EscalationRequest(
        journey_id="dunning-in_1001",
        action=Action.cancel_subscription,
        payment_reference="in_1001",
        payment_kind="invoice",
        subscription_id="sub_1",
        customer_id="cus_1",
    )
    for attempt in (1, 2, 3):
        assert env(attempt).run(activities.escalate, escalation) is None
    assert [e.action for e in sandbox.escalations("dunning-in_1001")] == ["cancel_subscription"]


def test_build_gateway_defaults_to_the_sandbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DUNNING_PUBLIC_URL", raising=False)
    settings = Settings(stripe_api_key=None, dunning_http_port=8123, dunning_data_dir=tmp_path / "data")
    gateway = build_gateway(settings)
    assert isinstance(gateway, SandboxGateway) and gateway.name == "sandbox"
    assert gateway.path == tmp_path / "data" / "sandbox.db" and gateway.path.exists()
    assert "SANDBOX payment gateway (no STRIPE_API_KEY)" in capsys.readouterr().out
    payment = Scenario.model_validate(
        {"id": "in_9", "amount": 1, "currency": "usd", "failed_at": T0.isoformat(), "customer": {"id": "c"}}
    ).to_failed_payment()
    assert gateway.collection_context(payment).update_url == "http://localhost:8123/sandbox/pay/in_9"

    monkeypatch.setenv("DUNNING_PUBLIC_URL", "https://billing.example.com/")
    elsewhere = build_gateway(settings, tmp_path / "other")
    assert elsewhere.path == tmp_path / "other" / "sandbox.db"
    assert elsewhere.collection_context(payment).update_url == "https://billing.example.com/sandbox/pay/in_9"
