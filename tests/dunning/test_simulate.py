"""The simulator: journeys through the pure engine, customer reactions, shared ledgers, reports."""

from __future__ import annotations

import gc
import json
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from dunning import generator, simulate
from dunning.journey_state import CardAttempt
from dunning.rules import RetryLimits
from dunning.models import Decline
from dunning.policy import load_policy, parse_policy
from dunning.scenarios import Scenario, ScenarioError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
BASELINE = load_policy(ROOT / "policies" / "baseline-8-in-2-weeks.yaml")
UTC = timezone.utc
FAILED = datetime(2026, 11, 3, 14, 0, tzinfo=UTC)
NSF = {"decline_code": "insufficient_funds", "network_decline_code": "51"}


def scenario(name: str = "a", *, behavior: dict | None = None, customer: dict | None = None, **extra: Any) -> dict[str, Any]:
    data = {
        "id": f"in_{name}",
        "amount": 2500,
        "currency": "usd",
        "failed_at": "2026-11-03T14:00:00Z",
        "customer": {"id": f"cus_{name}", "email": f"{name}@example.com", "timezone": "America/New_York", "country": "US"}
        | (customer or {}),
        "payment_methods": [{"id": f"pm_{name}", "brand": "visa", "default": True, "behavior": behavior or {"default": NSF}}],
        "initial_decline": {"payment_method": f"pm_{name}", **NSF},
    }
    data.update(extra)
    return data


def run(*datas: dict[str, Any], policy=DEFAULT, **kwargs) -> simulate.ClusterResult:
    scenarios = [Scenario.model_validate(d) for d in datas]
    return simulate.simulate_cluster(policy, scenarios, record_events=True, keep_states=True, **kwargs)


def events(result: simulate.ClusterResult) -> list[dict[str, Any]]:
    return [json.loads(line) for journey in result.journeys for line in journey.events]


def write(path: Path, datas: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in datas))
    return path


def test_a_decline_that_clears_on_payday_is_recovered_on_a_payday_morning():
    payday = {"from": "2026-11-13T10:00:00Z", "until": "2026-11-18T00:00:00Z", "outcome": "succeeded"}  # Fri 13th, salary paid early
    result = run(scenario(behavior={"default": NSF, "windows": [payday]}))
    journey = result.journeys[0]
    assert journey.result == "recovered"
    attempts = [e for e in events(result) if e["type"] == "attempt"]
    assert [a["outcome"] for a in attempts][-1] == "succeeded"
    assert all(a["outcome"] == "insufficient_funds" for a in attempts[:-1])
    won = datetime.fromisoformat(attempts[-1]["at"].replace("Z", "+00:00"))
    assert won.date().isoformat() in ("2026-11-15", "2026-11-16"), "the step prefers the 15th (or the day after)"
    assert 9 <= won.astimezone(simulate.customer_zone(Scenario.model_validate(scenario()).customer, None, "UTC")).hour < 12
    assert journey.attempts == len(attempts) and simulate.iso(journey.recovered_at) == attempts[-1]["at"]
    assert events(result)[-1] == {"scenario": "in_a", "at": simulate.iso(journey.ended_at), "type": "end", "result": "recovered"}
    assert result.network_violations == [] and result.messaging_violations == []


def test_event_lines_have_exactly_the_documented_fields():
    response = {"after_messages": 1, "delay": "2h", "action": "pay_out_of_band"}
    for event in events(run(scenario(customer_response=response))):
        keys = set(event) - {"scenario", "at", "type"}
        assert keys == {"attempt": {"payment_method", "outcome"}, "message": {"channel"}, "customer": {"action"}, "end": {"result"}}[event["type"]]
        assert event["at"].endswith("Z") and datetime.fromisoformat(event["at"].replace("Z", "+00:00")).microsecond == 0


def test_the_customer_updates_the_card_delay_after_the_nth_delivered_message():
    new_card = {"id": "pm_new", "brand": "mastercard", "behavior": {"default": "succeeded"}}
    response = {"after_messages": 3, "delay": "3h", "action": "update_payment_method", "new_payment_method": new_card}
    result = run(scenario(customer_response=response))
    timeline = events(result)
    messages = [e for e in timeline if e["type"] == "message"]
    customer = next(e for e in timeline if e["type"] == "customer")
    third = datetime.fromisoformat(messages[2]["at"].replace("Z", "+00:00"))
    assert customer == {"scenario": "in_a", "at": simulate.iso(third + timedelta(hours=3)), "type": "customer",
                        "action": "update_payment_method", "payment_method": "pm_new"}
    last = [e for e in timeline if e["type"] == "attempt"][-1]
    assert last["payment_method"] == "pm_new" and last["outcome"] == "succeeded"
    acted = datetime.fromisoformat(customer["at"].replace("Z", "+00:00"))
    assert timedelta(minutes=5) <= datetime.fromisoformat(last["at"].replace("Z", "+00:00")) - acted <= timedelta(minutes=35)
    state = result.states["in_a"]
    assert state.payment_methods[0].id == "pm_new" and state.payment_methods[0].default


def test_only_delivered_messages_count_towards_the_customer_reaction():
    # the email address is unusable: the email reminders are undeliverable, the in-app ones count
    response = {"after_messages": 2, "delay": "1h", "action": "cancel"}
    result = run(scenario(customer={"email": "not-an-address"}, customer_response=response))
    state = result.states["in_a"]
    assert any(m.status == "undeliverable" for m in state.messages)
    delivered = [m for m in state.messages if m.status == "sent"]
    customer = next(e for e in events(result) if e["type"] == "customer")
    assert customer["at"] == simulate.iso(delivered[1].at + timedelta(hours=1))
    assert result.journeys[0].result == "cancelled"


@pytest.mark.parametrize(
    ("action", "result"),
    [("pay_out_of_band", "recovered"), ("cancel", "cancelled"), ("dispute", "disputed")],
)
def test_customer_actions_end_the_journey(action: str, result: str):
    response = {"after_messages": 1, "delay": "30m", "action": action}
    outcome = run(scenario(customer_response=response))
    journey, timeline = outcome.journeys[0], events(outcome)
    acted = next(e for e in timeline if e["type"] == "customer")
    assert journey.result == result and timeline[-1]["type"] == "end" and timeline[-1]["result"] == result
    after = [e for e in timeline if e["at"] > acted["at"] and e["type"] == "attempt"]
    assert after == [], "no attempt after the customer paid, cancelled or disputed"
    if action == "dispute":
        assert timeline[-1]["at"] == acted["at"] and outcome.states["in_a"].paused_since is not None


def test_a_reaction_due_after_the_journey_ended_does_not_happen():
    response = {"after_messages": 1, "delay": "20d", "action": "cancel"}
    result = run(scenario(behavior={"default": "succeeded"}, customer_response=response))
    assert result.journeys[0].result == "recovered"
    assert not any(e["type"] == "customer" for e in events(result))


MAC02 = {"decline_code": "generic_decline", "network_advice_code": "02"}


def shared_card(name: str, amount: int, minutes: int) -> dict[str, Any]:
    data = scenario(name, customer={"id": "cus_shared"}, amount=amount,
                    failed_at=(FAILED + timedelta(minutes=minutes)).isoformat())
    data["payment_methods"] = [{"id": "pm_shared", "brand": "mastercard", "default": True, "fingerprint": "fp_1", "behavior": {"default": MAC02}}]
    data["initial_decline"] = {"payment_method": "pm_shared", **MAC02}
    return data


def test_journeys_sharing_a_card_share_its_network_budget():
    together = run(shared_card("one", 2500, 0), shared_card("two", 900, 3))
    attempts = sorted(
        (e["at"], e["scenario"]) for e in events(together) if e["type"] == "attempt"
    )
    times = [datetime.fromisoformat(at.replace("Z", "+00:00")) for at, _ in attempts]
    # MAC 02: 72 h after any decline on the card, whichever journey made it
    assert all(b - a >= timedelta(hours=72) for a, b in zip(times, times[1:]))
    assert {s for _, s in attempts} == {"in_one", "in_two"}
    assert any(entry.kind == "budget" for state in together.states.values() for entry in state.timeline), (
        "a journey learnt of the other's attempts when the ledger refused its charge"
    )
    assert together.network_violations == []
    alone = run(shared_card("one", 2500, 0))
    assert len([e for e in events(alone) if e["type"] == "attempt"]) > len([a for a in attempts if a[1] == "in_one"])


def test_the_frequency_cap_holds_across_one_customers_journeys():
    first = scenario("x", customer={"id": "cus_same"})
    second = scenario("y", customer={"id": "cus_same"}, failed_at=(FAILED + timedelta(minutes=1)).isoformat())
    result = run(first, second)
    skipped = [m for m in result.states["in_y"].messages if m.status == "skipped" and "frequency cap" in m.detail]
    assert skipped, "the second journey's notice waits for the customer's cap"
    assert result.messaging_violations == []


def test_violation_checks_find_what_is_broken():
    state_result = run(scenario(customer={"timezone": "Asia/Tokyo"}))
    journey = state_result.states["in_a"]
    policy = DEFAULT
    first = next(m for m in journey.messages if m.status == "sent")
    bad = replace(first, at=datetime(2026, 11, 3, 14, 30, tzinfo=UTC))  # 23:30 in Tokyo
    journey.messages.append(bad)
    sc = Scenario.model_validate(scenario(customer={"timezone": "Asia/Tokyo"}, opted_out=[first.channel.value]))
    found = simulate.messaging_violations(policy, [(sc, journey)])
    assert any("quiet hours" in f for f in found)
    assert any("opted out" in f for f in found)
    assert any("messages within 24 hours" in f for f in found) or any("within 7 days" in f for f in found)

    def attempt(minutes: int, initial: bool) -> CardAttempt:
        return CardAttempt(at=FAILED + timedelta(minutes=minutes), card_key="fp", brand="mastercard", amount=100,
                           currency="usd", journey_id="j1" if minutes == 0 else "j2", payment_method_id="pm",
                           decline=Decline(network_advice_code="02"))

    initials = [attempt(0, True), attempt(5, True)]  # the processor's two failures, minutes apart
    assert simulate.network_violations(initials, initials, RetryLimits()) == []
    retry = attempt(60, False)
    found = simulate.network_violations([*initials, retry], initials, RetryLimits())
    assert found and all("2026-11-03T15:00:00" in f for f in found)


def test_variants_are_each_evaluated_on_the_whole_segment(tmp_path: Path):
    text = (ROOT / "policies" / "default.yaml").read_text() + """
segments:
  - name: usd
    match: {currencies: [usd]}
    variants:
      - name: control
        weight: 1
        steps:
          - {id: notice, at: 0s, window: 1d, action: notify, channels: [email], template: payment_failed}
          - {id: retry-1, at: 3d, window: 2d, action: retry}
          - {id: hand-off, at: 20d, action: hand_off}
      - name: eager
        weight: 1
        steps:
          - {id: notice, at: 0s, window: 1d, action: notify, channels: [email], template: payment_failed}
          - {id: retry-1, at: 1d, window: 2d, action: retry}
          - {id: retry-2, at: 5d, window: 2d, action: retry}
          - {id: hand-off, at: 20d, action: hand_off}
"""
    policy = parse_policy(text)
    datas = [
        scenario(f"s{i}", behavior={"default": "succeeded"} if i % 2 else {"default": NSF}) for i in range(12)
    ] + [scenario("eur", currency="eur")]
    path = write(tmp_path / "s.jsonl", datas)
    sim = simulate.simulate_file(path, policy, workers=1)
    variants = {v["variant"]: v for v in sim.to_dict()["variants"]}
    assert set(variants) == {"control", "eager"}
    assert sum(v["assigned"] for v in variants.values()) == 12
    assert all(v["report"]["journeys"] == 12 for v in variants.values()), "every usd journey, forced on the variant"
    assert variants["eager"]["report"]["attempts"]["total"] > variants["control"]["report"]["attempts"]["total"]
    assert variants["eager"]["report"]["days_to_recovery"]["median"] < variants["control"]["report"]["days_to_recovery"]["median"]
    assert sim.policy.journeys == 13


def test_bad_lines_name_their_line_and_field(tmp_path: Path):
    good = scenario()
    cases = [
        ("{not json", None, "invalid JSON"),
        (json.dumps(scenario("b") | {"amount": -5}), "amount", "greater than 0"),
        (json.dumps(scenario("c", behavior={"default": NSF, "windows": [{"from": "2026-11-05T00:00:00Z", "until": "2026-11-04T00:00:00Z", "outcome": "succeeded"}]})),
         "payment_methods.0.behavior.windows.0", "`until` must be after `from`"),
        (json.dumps(good), "id", "duplicate scenario id"),
    ]
    for text, field, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n\n" + text + "\n")
        with pytest.raises(ScenarioError) as error:
            simulate.simulate_file(path, DEFAULT, workers=1)
        assert error.value.line == 3 and error.value.field == field and message in str(error.value)
        assert str(error.value).startswith(f"{path}:3")


def test_worker_processes_read_the_same_lines_and_report_the_same_bad_line(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(simulate, "SCAN_CHUNK", 2)  # several chunks for the workers to parse
    good = [json.dumps(scenario(name)) for name in "abcdefg"]
    files = [
        good,
        good[:3] + ["", good[3]] + good[4:],
        good[:5] + ["{not json"] + good[5:],
        good[:5] + ["[1]"] + good[5:],
        good[:5] + [good[1], "{not json"] + good[5:],
    ]
    for texts in files:
        path = tmp_path / "lines.jsonl"
        path.write_text("\n".join(texts) + "\n")
        read = []
        for workers in (1, 2):
            try:
                read.append(simulate.read_lines(path, workers=workers))
            except ScenarioError as error:
                read.append(str(error))
        assert read[0] == read[1]


def test_a_bad_scenario_simulated_in_a_worker_process_is_reported(tmp_path: Path):
    path = write(tmp_path / "bad.jsonl", [scenario("a"), scenario("b"), scenario("c") | {"amount": -5}])
    with pytest.raises(ScenarioError) as error:
        simulate.run_file(path, [simulate.Run("policy", DEFAULT)], workers=2, batch_size=1)
    assert error.value.line == 3 and error.value.field == "amount"


def test_parallel_and_serial_runs_report_the_same(tmp_path: Path):
    path = tmp_path / "g.jsonl"
    with open(path, "w") as handle:
        generator.write(120, seed=3, handle=handle)
    lines: list[str] = []
    serial = simulate.simulate_file(path, DEFAULT, baseline=BASELINE, workers=1, events=lines.append).to_dict()
    parallel_lines: list[str] = []
    runs = [simulate.Run("policy", DEFAULT, record_events=True), simulate.Run("baseline", BASELINE)]
    results = simulate.run_file(path, runs, workers=2, batch_size=10)
    assert len(results["policy"]) == len(results["baseline"]) == len(simulate.clusters(simulate.read_lines(path)))
    report = simulate.Report(DEFAULT.version)
    for result in results["policy"]:
        report.add(result)
        parallel_lines.extend(line for j in result.journeys for line in j.events)
    assert report.to_dict() == serial["policy"]
    assert parallel_lines == lines


@pytest.mark.parametrize("policy_file", ["default.yaml", "demo.yaml"])
def test_simulating_makes_no_reference_cycles(tmp_path: Path, policy_file: str):
    """`run_file` turns the cyclic garbage collector off: nothing a run does may need it."""
    path = tmp_path / "g.jsonl"
    with open(path, "w") as handle:
        generator.write(300, seed=11, handle=handle)
    policy = load_policy(ROOT / "policies" / policy_file)
    simulate.simulate_file(path, policy, baseline=BASELINE, workers=1, events=lambda line: None)  # warm caches
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)  # every collection keeps what it finds in gc.garbage
    try:
        enabled_before = gc.isenabled()
        simulate.simulate_file(path, policy, baseline=BASELINE, workers=1, events=lambda line: None)
        assert gc.isenabled() == enabled_before, "the run restores the collector"
        gc.collect()
        assert not gc.garbage, f"reference cycles: {Counter(type(o).__name__ for o in gc.garbage).most_common(5)}"
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_report_figures():
    assert simulate.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert simulate.percentile([0, 10], 0.9) == 9.0
    assert simulate.percentile([], 0.5) is None
    datas = [scenario("ok", behavior={"default": "succeeded"}), scenario("no"),
             scenario("yen", currency="jpy", amount=1980, behavior={"default": "succeeded"})]
    report = simulate.Report("p")
    report.add(run(datas[0], policy=DEFAULT))
    report.add(run(datas[1], policy=DEFAULT))
    report.add(run(datas[2], policy=DEFAULT))
    figures = report.to_dict()
    assert figures["journeys"] == 3 and figures["recovered"] == {"count": 2, "rate": 0.6667}
    assert figures["recovered_amount"] == {
        "jpy": {"due": 1980, "recovered": 1980, "rate": 1.0},
        "usd": {"due": 5000, "recovered": 2500, "rate": 0.5},
    }
    assert figures["attempts"]["total"] == 2 + 8 and figures["attempts"]["per_recovery"] == 5.0
    assert figures["messages"]["by_channel"]["email"] >= 3
    assert simulate.minor_unit_exponent("JPY") == 0 and simulate.minor_unit_exponent("kwd") == 3
    shares = report.cumulative_recovery()
    assert len(shares) == 61 and shares[-1] == pytest.approx(2 / 3) and shares == sorted(shares)
    delta = simulate.deltas(figures, figures)
    assert delta["recovered"]["rate"] == 0 and delta["violations"] == {"network": 0, "messaging": 0}


def test_the_default_policy_beats_eight_tries_in_two_weeks(tmp_path: Path):
    path = tmp_path / "g.jsonl"
    with open(path, "w") as handle:
        generator.write(600, seed=1, handle=handle)
    figures = simulate.simulate_file(path, DEFAULT, baseline=BASELINE, workers=2).to_dict()
    ours, theirs = figures["policy"], figures["baseline"]
    assert ours["recovered"]["rate"] >= theirs["recovered"]["rate"] + 0.05
    for currency in ("usd", "eur", "gbp", "jpy"):
        assert ours["recovered_amount"][currency]["recovered"] > theirs["recovered_amount"][currency]["recovered"], currency
    assert ours["attempts"]["total"] < theirs["attempts"]["total"]
    assert ours["violations"]["network"] == ours["violations"]["messaging"] == 0
    assert theirs["violations"]["network"] == theirs["violations"]["messaging"] == 0
