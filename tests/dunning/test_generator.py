"""`dunning scenarios generate`: reproducible, valid, and the mix docs/scenarios.md documents."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo
from pathlib import Path

import pytest

from dunning import generator
from dunning.engine import expired
from dunning.models import PaymentMethod
from dunning.scenarios import Scenario, load_scenarios

N = 4000


@pytest.fixture(scope="module")
def mix() -> list[dict]:
    return list(generator.generate(N, seed=11))


def share(values: list, predicate) -> float:
    return sum(1 for v in values if predicate(v)) / len(values)


def test_the_same_seed_gives_the_same_file_and_a_prefix_does_not_depend_on_n():
    first, again = io.StringIO(), io.StringIO()
    generator.write(300, 5, first)
    generator.write(300, 5, again)
    assert first.getvalue() == again.getvalue()
    longer = list(generator.generate(500, 5))
    assert [json.dumps(d, separators=(",", ":")) for d in longer[:300]] == first.getvalue().splitlines()
    assert list(generator.generate(50, 6)) != list(generator.generate(50, 5))
    assert len(list(generator.generate(0, 1))) == 0
    with pytest.raises(ValueError):
        list(generator.generate(-1, 1))


def test_every_line_loads_as_a_scenario(tmp_path: Path, mix):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in mix[:1500]))
    scenarios = list(load_scenarios(path))
    assert len(scenarios) == 1500
    for s in scenarios:
        failed = s.failed_at
        assert generator.DEFAULT_START <= failed < generator.DEFAULT_START + timedelta(days=generator.FAILURE_SPREAD_DAYS, minutes=30)
        first = s.payment_methods[0]
        # the decline that started the journey is what the card said at that moment
        assert first.behavior.outcome_at(failed, first.id).status == "declined"
        assert s.initial_decline.payment_method == first.id and first.default
        for channel in s.opted_out:
            assert (s.customer.email if channel.value == "email" else s.customer.phone)


def test_decline_mix_matches_the_documented_shares(mix):
    cards = [d for d in mix if d["payment_methods"][0].get("type", "card") == "card"]
    banks = [d for d in mix if d not in cards]
    code = lambda d: d["initial_decline"]["decline_code"]  # noqa: E731
    mac = lambda d: d["initial_decline"].get("network_advice_code")  # noqa: E731
    documented = dict(generator.CARD_DECLINES)
    tolerance = 0.025
    assert share(cards, lambda d: code(d) == "insufficient_funds" and not mac(d)) == pytest.approx(documented["insufficient_funds"] / 100, abs=tolerance)
    assert share(cards, lambda d: code(d) == "do_not_honor" and not mac(d)) == pytest.approx(documented["do_not_honor"] / 100, abs=tolerance)
    assert share(cards, lambda d: code(d) == "expired_card") == pytest.approx(documented["expired_card"] / 100, abs=tolerance)
    assert share(cards, lambda d: code(d) in ("lost_card", "stolen_card", "pickup_card")) == pytest.approx(documented["lost_stolen"] / 100, abs=tolerance)
    assert share(cards, lambda d: mac(d) is not None) == pytest.approx(documented["mastercard_advice"] / 100, abs=tolerance)
    assert all(d["payment_methods"][0]["brand"] == "mastercard" for d in cards if mac(d))
    eligible = [d for d in mix if any(c.code == d["customer"]["country"] and c.bank_debit for c in generator.COUNTRIES)]
    assert share(eligible, lambda d: d in banks) == pytest.approx(generator.BANK_DEBIT_SHARE, abs=0.03)
    assert share(banks, lambda d: code(d) == "insufficient_funds") == pytest.approx(0.70, abs=0.06)
    assert {d["payment_methods"][0]["type"] for d in banks} <= {"us_bank_account", "bacs_debit", "sepa_debit", "au_becs_debit"}


def test_insufficient_funds_clear_on_the_customers_paydays(mix):
    nsf = [d for d in mix if d["initial_decline"]["decline_code"] == "insufficient_funds"]
    never = share(nsf, lambda d: not d["payment_methods"][0]["behavior"].get("windows"))
    assert never == pytest.approx(generator.INSUFFICIENT_NEVER + (1 - generator.INSUFFICIENT_NEVER) * 0.03, abs=0.05)
    zones = {c.code: c for c in generator.COUNTRIES}
    for d in nsf[:400]:
        for window in d["payment_methods"][0]["behavior"].get("windows", ()):
            start = datetime.fromisoformat(window["from"].replace("Z", "+00:00"))
            until = datetime.fromisoformat(window["until"].replace("Z", "+00:00"))
            assert window["outcome"] == "succeeded"
            assert timedelta(days=1) <= until - start <= timedelta(days=7)
            # money arrives at 05:00 local, in one of the country's zones
            country = zones[d["customer"]["country"]]
            assert any(start.astimezone(ZoneInfo(z)).hour == 5 for z in country.zones)


def test_paydays_follow_their_schedule():
    days = generator.paydays("monthly_25", datetime(2026, 11, 1).date(), datetime(2027, 1, 31).date(), "JP", 0)
    # Oct-Jan 25ths; 2026-12-25 is a Friday, 2027-01-25 a Monday: all business days in Japan
    assert [d.isoformat() for d in days] == ["2026-11-25", "2026-12-25", "2027-01-25"]
    weekend = generator.paydays("monthly_25", datetime(2026, 10, 1).date(), datetime(2026, 10, 31).date(), "JP", 0)
    assert [d.isoformat() for d in weekend] == ["2026-10-23"], "Sunday the 25th is paid on Friday"
    biweekly = generator.paydays("biweekly_friday", datetime(2026, 11, 1).date(), datetime(2026, 12, 31).date(), "US", 1)
    assert all(d.weekday() == 4 or (d + timedelta(days=1)).weekday() == 4 for d in biweekly)
    assert all(b - a == timedelta(days=14) for a, b in zip(biweekly, biweekly[1:]) if a.weekday() == b.weekday() == 4)
    last = generator.paydays("last_business_day", datetime(2026, 11, 1).date(), datetime(2026, 12, 31).date(), "GB", 0)
    assert [d.isoformat() for d in last] == ["2026-11-30", "2026-12-31"]


def test_customers_countries_and_currencies(mix):
    countries = Counter(d["customer"]["country"] for d in mix)
    weights = {c.code: c.weight for c in generator.COUNTRIES}
    total = sum(weights.values())
    for code, weight in weights.items():
        assert countries[code] / N == pytest.approx(weight / total, abs=0.025), code
    yen = [d for d in mix if d["currency"] == "jpy"]
    assert yen and all(d["customer"]["country"] == "JP" and d["amount"] in (980, 1980, 4980, 9800, 29800) for d in yen)
    assert {d["customer"]["locale"] for d in mix} >= {"en", "ja", "ro", "ar", "de", "pt"}
    assert share(mix, lambda d: "phone" in d["customer"]) == pytest.approx(generator.HAS_PHONE, abs=0.03)
    assert share(mix, lambda d: "timezone" in d["customer"]) == pytest.approx(generator.PROFILE_TIMEZONE, abs=0.03)


def test_customer_responses(mix):
    responses = [d["customer_response"] for d in mix if "customer_response" in d]
    actions = Counter(r["action"] for r in responses)
    assert set(actions) == {"update_payment_method", "pay_out_of_band", "dispute", "cancel"}
    must_act = [d for d in mix if d["initial_decline"]["decline_code"] in ("expired_card", "lost_card", "stolen_card", "pickup_card")]
    updated = share(must_act, lambda d: d.get("customer_response", {}).get("action") == "update_payment_method")
    assert updated == pytest.approx(dict(generator.RESPONSES_MUST_ACT)["update_payment_method"] / 100, abs=0.06)
    for r in responses:
        assert (r["action"] == "update_payment_method") == ("new_payment_method" in r)
        assert 1 <= r["after_messages"] <= 4
    works = [r for r in responses if r["action"] == "update_payment_method"]
    assert share(works, lambda r: r["new_payment_method"]["behavior"]["default"] == "succeeded") == pytest.approx(generator.NEW_CARD_WORKS, abs=0.05)


def test_expired_cards_are_expired_when_the_payment_fails(mix):
    for d in mix:
        if d["initial_decline"]["decline_code"] == "expired_card":
            method = PaymentMethod.model_validate({k: v for k, v in d["payment_methods"][0].items() if k != "behavior"})
            assert expired(method, datetime.fromisoformat(d["failed_at"].replace("Z", "+00:00")))


def test_second_subscriptions_share_the_card_in_the_same_billing_run(mix):
    seconds = [d for d in mix if d["id"].endswith("_2")]
    assert share(mix, lambda d: d in seconds) == pytest.approx(generator.SECOND_SUBSCRIPTION, abs=0.015)
    by_id = {d["id"]: d for d in mix}
    for second in seconds:
        first = by_id[second["id"][:-2]]
        assert first["customer"] == second["customer"]
        assert first["payment_methods"][0]["fingerprint"] == second["payment_methods"][0]["fingerprint"]
        gap = datetime.fromisoformat(second["failed_at"].replace("Z", "+00:00")) - datetime.fromisoformat(first["failed_at"].replace("Z", "+00:00"))
        assert timedelta(0) < gap <= timedelta(minutes=20)


def test_scenarios_round_trip_through_the_model(mix):
    for d in mix[:200]:
        assert Scenario.model_validate(json.loads(Scenario.model_validate(d).model_dump_json(by_alias=True))) == Scenario.model_validate(d)
