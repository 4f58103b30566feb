"""The sandbox gateway and the scenario format that drives it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from activities.payments import PERMANENT_PAYMENT_ERROR
from activities.sandbox import SandboxFault, SandboxGateway
from dunning.enums import Action
from dunning.rules import RetryLimits
from dunning.models import FailedPayment, PaymentMethod
from dunning.ports import ChargeRequest, EscalationRequest, ReconcileRequest
from dunning.scenarios import (
    Behavior,
    CustomerResponse,
    DeclineOutcome,
    Scenario,
    ScenarioError,
    load_scenarios,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WINDOWED = {
    "default": {"decline_code": "insufficient_funds"},
    "windows": [
        {"from": "2026-03-05T00:00:00Z", "until": "2026-03-06T00:00:00Z", "outcome": "succeeded"},
        {
            "from": "2026-03-04T00:00:00Z",
            "until": "2026-03-07T00:00:00Z",
            "outcome": {"decline_code": "do_not_honor", "network_decline_code": "05"},
        },
    ],
}


def request(
    *,
    attempt: int = 1,
    at: datetime = T0,
    pm: str = "pm_visa",
    payment: str = "in_1001",
    amount: int = 2500,
    journey: str | None = None,
) -> ChargeRequest:
    return ChargeRequest(
        journey_id=journey or f"dunning-{payment}",
        attempt_number=attempt,
        payment_reference=payment,
        payment_kind="invoice",
        payment_method=PaymentMethod(id=pm, brand="visa", fingerprint=f"fp_{pm}"),
        amount=amount,
        currency="usd",
        at=at,
        limits=RetryLimits(),
    )


# --- scenarios ------------------------------------------------------------------------------------


def test_behavior_windows_first_match_and_bounds() -> None:
    behavior = Behavior.model_validate(WINDOWED)
    at = lambda text: datetime.fromisoformat(text)  # noqa: E731
    assert behavior.outcome_at(at("2026-03-03T23:59:59+00:00"), "pm").decline.decline_code == "insufficient_funds"
    # 03-04 is covered only by the second window
    early = behavior.outcome_at(at("2026-03-04T00:00:00+00:00"), "pm")
    assert (early.status, early.decline.decline_code, early.decline.network_decline_code) == ("declined", "do_not_honor", "05")
    assert early.decline.payment_method == "pm"
    # both windows cover 03-05: the first listed wins; `from` is inclusive
    assert behavior.outcome_at(at("2026-03-05T00:00:00+00:00"), "pm").status == "succeeded"
    # `until` is exclusive
    assert behavior.outcome_at(at("2026-03-06T00:00:00+00:00"), "pm").decline.decline_code == "do_not_honor"
    assert behavior.outcome_at(at("2026-03-07T00:00:00+00:00"), "pm").decline.decline_code == "insufficient_funds"


def test_behavior_defaults_to_generic_decline_and_rejects_naive_times() -> None:
    outcome = Behavior().outcome_at(T0, "pm_x")
    assert outcome.status == "declined"
    assert outcome.decline.decline_code == "generic_decline"
    with pytest.raises(ValueError, match="UTC offset"):
        Behavior().outcome_at(datetime(2026, 3, 2), "pm_x")
    with pytest.raises(ValidationError, match="after `from`"):
        Behavior.model_validate(
            {"windows": [{"from": "2026-03-05T00:00:00Z", "until": "2026-03-05T00:00:00Z", "outcome": "succeeded"}]}
        )


def test_scenario_round_trip_and_failed_payment(make_scenario: Callable[..., Scenario]) -> None:
    scenario = make_scenario(
        methods=[{"id": "pm_visa", "brand": "visa", "behavior": WINDOWED}],
        customer_response={
            "after_messages": 2,
            "delay": "PT6H",
            "action": "update_payment_method",
            "new_payment_method": {"id": "pm_new", "brand": "mastercard", "behavior": {"default": "succeeded"}},
        },
    )
    assert scenario.customer_response.delay == timedelta(hours=6)
    assert Scenario.model_validate_json(scenario.model_dump_json()) == scenario
    assert '"from":' in scenario.model_dump_json()
    payment = scenario.to_failed_payment()
    assert type(payment) is FailedPayment
    assert all(type(m) is PaymentMethod for m in payment.payment_methods)
    assert FailedPayment.model_validate_json(payment.model_dump_json()) == payment
    assert payment.kind == "invoice" and payment.journey_id == "dunning-in_1001"
    assert scenario.behavior_for("pm_new").default == "succeeded"
    assert scenario.behavior_for("pm_visa") == Behavior.model_validate(WINDOWED)
    with pytest.raises(KeyError):
        scenario.behavior_for("pm_other")


def test_customer_response_rules() -> None:
    with pytest.raises(ValidationError, match="needs `new_payment_method`"):
        CustomerResponse.model_validate({"after_messages": 1, "delay": "P1D", "action": "update_payment_method"})
    with pytest.raises(ValidationError, match="after_messages"):
        CustomerResponse.model_validate({"after_messages": 0, "delay": "P1D", "action": "cancel"})
    assert CustomerResponse.model_validate({"after_messages": 1, "delay": "P1DT2H", "action": "dispute"}).delay == timedelta(hours=26)


def test_load_scenarios_reports_line_and_field(tmp_path: Path, make_scenario: Callable[..., Scenario]) -> None:
    good = make_scenario("in_1").model_dump_json()
    path = tmp_path / "s.jsonl"
    path.write_text(good + "\n\n" + make_scenario("in_2").model_dump_json() + "\n")
    assert [s.id for s in load_scenarios(path)] == ["in_1", "in_2"]

    bad_outcome = json.loads(make_scenario("in_3").model_dump_json())
    bad_outcome["payment_methods"][0]["behavior"] = {"default": {"decline_cod": "x"}}
    path.write_text(good + "\n" + json.dumps(bad_outcome) + "\n")
    with pytest.raises(ScenarioError) as caught:
        list(load_scenarios(path))
    assert caught.value.line == 2
    assert caught.value.field == "payment_methods.0.behavior.default.decline_cod"
    assert f"{path}:2: payment_methods.0.behavior.default.decline_cod" in str(caught.value)

    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(ScenarioError, match=r":2: id: duplicate scenario id 'in_1' \(first on line 1\)"):
        list(load_scenarios(path))

    path.write_text("{not json\n")
    with pytest.raises(ScenarioError, match=r":1: invalid JSON"):
        list(load_scenarios(path))

    naive = json.loads(good)
    naive["failed_at"] = "2026-03-02T09:00:00"
    path.write_text(json.dumps(naive) + "\n")
    with pytest.raises(ScenarioError, match=r":1: failed_at: .*UTC offset"):
        list(load_scenarios(path))


# --- gateway ----------------------------------------------------------------------------------------


def test_charge_follows_behaviour_at_request_time(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario(methods=[{"id": "pm_visa", "brand": "visa", "behavior": WINDOWED}]))
    first = sandbox.charge(request(attempt=1, at=T0))
    second = sandbox.charge(request(attempt=2, at=datetime(2026, 3, 5, 12, tzinfo=UTC)))
    assert first.status == "declined" and first.decline.decline_code == "insufficient_funds"
    assert first.decline.payment_method == "pm_visa"
    assert second.status == "succeeded"
    assert first.charge_id != second.charge_id and first.charge_id.startswith("ch_sandbox_")
    assert sandbox.count_charges("dunning-in_1001") == 2


def test_same_key_returns_stored_outcome_without_new_charge(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario(methods=[{"id": "pm_visa", "behavior": {"default": "succeeded"}}]))
    first = sandbox.charge(request())
    # Even if the scenario changes, a replayed key answers what was charged.
    sandbox.register(make_scenario(methods=[{"id": "pm_visa"}]))
    assert sandbox.charge(request()) == first
    assert sandbox.count_charges("dunning-in_1001") == 1
    assert list(sandbox.charges_by_key()) == ["dunning-in_1001:attempt:1"]


def test_key_reused_with_other_parameters_is_permanent(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario())
    sandbox.charge(request())
    with pytest.raises(ApplicationError) as caught:
        sandbox.charge(request(amount=999))
    assert caught.value.non_retryable and caught.value.type == PERMANENT_PAYMENT_ERROR
    assert sandbox.count_charges("dunning-in_1001") == 1


def test_deterministic_across_instances(tmp_path: Path, make_scenario) -> None:
    scenario = make_scenario(methods=[{"id": "pm_visa", "behavior": WINDOWED}])
    runs = []
    for name in ("a", "b"):
        gateway = SandboxGateway(tmp_path / name / "sandbox.db")
        gateway.register(scenario)
        runs.append([gateway.charge(request(attempt=n, at=T0 + timedelta(days=n))) for n in range(1, 6)])
    assert runs[0] == runs[1]
    assert [o.status for o in runs[0]] == ["declined", "declined", "succeeded", "declined", "declined"]


def test_unknown_methods_and_payments_decline_generically(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario(methods=[{"id": "pm_visa", "behavior": {"default": "succeeded"}}]))
    unknown = sandbox.charge(request(pm="pm_unknown"))
    assert (unknown.status, unknown.decline.decline_code) == ("declined", "generic_decline")
    assert "not registered" in unknown.message
    unregistered = sandbox.charge(request(payment="in_never"))
    assert (unregistered.status, unregistered.decline.decline_code) == ("declined", "generic_decline")


def test_method_known_from_another_payment_of_the_customer(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario("in_a", methods=[{"id": "pm_shared", "behavior": {"default": "succeeded"}}]))
    sandbox.register(make_scenario("in_b", methods=[{"id": "pm_other"}]))
    sandbox.register(make_scenario("in_c", customer_id="cus_2", methods=[{"id": "pm_other"}]))
    assert sandbox.charge(request(payment="in_b", pm="pm_shared")).status == "succeeded"
    # another customer's payment does not see cus_1's method
    assert sandbox.charge(request(payment="in_c", pm="pm_shared")).status == "declined"


def test_collection_context_and_attach(sandbox: SandboxGateway, make_scenario) -> None:
    scenario = make_scenario(
        methods=[{"id": "pm_visa", "default": True}, {"id": "pm_backup"}],
        customer_response={
            "after_messages": 1,
            "delay": "1h",
            "action": "update_payment_method",
            "new_payment_method": {"id": "pm_new", "brand": "visa", "behavior": {"default": "succeeded"}},
        },
    )
    unregistered = scenario.to_failed_payment().model_copy(update={"id": "in_elsewhere"})
    context = sandbox.collection_context(unregistered)
    assert context.payment_methods == unregistered.payment_methods
    assert context.update_url == "http://dunning.test/sandbox/pay/in_elsewhere"

    sandbox.register(scenario)
    payment = scenario.to_failed_payment()
    assert [m.id for m in sandbox.collection_context(payment).payment_methods] == ["pm_visa", "pm_backup"]
    added = sandbox.attach_payment_method(payment.id, "pm_new")
    assert added.default and type(added) is PaymentMethod
    methods = sandbox.collection_context(payment).payment_methods
    assert [(m.id, m.default) for m in methods] == [("pm_new", True), ("pm_visa", False), ("pm_backup", False)]
    assert sandbox.charge(request(pm="pm_new")).status == "succeeded"
    with pytest.raises(KeyError):
        sandbox.attach_payment_method("in_missing", "pm_new")


def test_read_back(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario())
    charged = sandbox.charge(request())
    reconcile = ReconcileRequest(
        journey_id="dunning-in_1001", attempt_number=1, payment_reference="in_1001", payment_kind="invoice"
    )
    assert sandbox.read_back(reconcile) == charged
    missing = sandbox.read_back(reconcile.model_copy(update={"attempt_number": 2}))
    assert missing.status == "declined" and missing.charge_id is None


def test_escalations_recorded_once_per_journey_and_action(sandbox: SandboxGateway) -> None:
    base = EscalationRequest(
        journey_id="dunning-in_1001",
        action=Action.restrict_access,
        payment_reference="in_1001",
        payment_kind="invoice",
        subscription_id="sub_1",
        customer_id="cus_1",
    )
    sandbox.escalate(base)
    sandbox.escalate(base)
    sandbox.escalate(base.model_copy(update={"action": Action.write_off}))
    recorded = sandbox.escalations("dunning-in_1001")
    assert [(e.action, e.subscription_id) for e in recorded] == [("restrict_access", "sub_1"), ("write_off", "sub_1")]
    assert sandbox.escalations("dunning-other") == []


@pytest.mark.parametrize("kind", ["timeout", "server_error"])
def test_injected_faults(sandbox: SandboxGateway, make_scenario, kind: str) -> None:
    sandbox.register(make_scenario(methods=[{"id": "pm_visa", "behavior": {"default": "succeeded"}}]))
    sandbox.fail_next(2, kind)
    for _ in range(2):
        with pytest.raises(SandboxFault, match=kind.replace("_", " ")):
            sandbox.charge(request())
    # a timeout loses the response after charging; a server error charges nothing
    assert sandbox.count_charges("dunning-in_1001") == (1 if kind == "timeout" else 0)
    assert sandbox.charge(request()).status == "succeeded"
    assert sandbox.count_charges("dunning-in_1001") == 1
    with pytest.raises(ValueError):
        sandbox.fail_next(1, "crash")  # type: ignore[arg-type]


def test_concurrent_threads_charge_once(sandbox: SandboxGateway, make_scenario) -> None:
    sandbox.register(make_scenario(methods=[{"id": "pm_visa", "behavior": {"default": "succeeded"}}]))
    barrier = threading.Barrier(8)

    def go(_: int):
        barrier.wait(timeout=10)
        return sandbox.charge(request())

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(go, range(8), timeout=30))
    assert len(set(outcomes)) == 1
    assert sandbox.count_charges("dunning-in_1001") == 1


_CHARGE_SCRIPT = """
import json, sys
from datetime import datetime, timedelta
from activities.sandbox import SandboxGateway
from dunning.rules import RetryLimits
from dunning.models import PaymentMethod
from dunning.ports import ChargeRequest

gateway = SandboxGateway(sys.argv[1])
t0 = datetime.fromisoformat(sys.argv[2])
statuses = []
for n in range(1, 7):
    request = ChargeRequest(
        journey_id="dunning-in_1001", attempt_number=n, payment_reference="in_1001",
        payment_kind="invoice", payment_method=PaymentMethod(id="pm_visa", brand="visa"),
        amount=2500, currency="usd", at=t0 + timedelta(days=n), limits=RetryLimits(),
    )
    statuses.append(gateway.charge(request).status)
print(json.dumps(statuses))
"""


def test_several_processes_share_the_file(tmp_path: Path, make_scenario) -> None:
    path = tmp_path / "shared" / "sandbox.db"
    SandboxGateway(path).register(make_scenario(methods=[{"id": "pm_visa", "behavior": WINDOWED}]))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CHARGE_SCRIPT, str(path), T0.isoformat()],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    results = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    assert all(r == results[0] for r in results)
    charges = SandboxGateway(path).charges_by_key()
    assert len(charges) == 6
    assert [c.outcome.status for c in charges.values()] == results[0]
    assert results[0] == ["declined", "declined", "succeeded", "declined", "declined", "declined"]


def test_decline_outcome_fields_reach_the_decline(sandbox: SandboxGateway, make_scenario) -> None:
    decline = DeclineOutcome(
        decline_code="card_velocity_exceeded",
        network_decline_code="61",
        advice_code="try_again_later",
        network_advice_code="24",
    )
    sandbox.register(
        make_scenario(methods=[{"id": "pm_visa", "behavior": {"default": decline.model_dump()}}])
    )
    outcome = sandbox.charge(request())
    assert outcome.decline.model_dump(exclude={"payment_method"}) == decline.model_dump()
