from __future__ import annotations

from datetime import timedelta

import pytest

from dunning.declines import (
    STOP_CLASSES,
    TABLES,
    VISA_RETRY,
    DeclineClass,
    TableError,
    classify,
    parse_table,
    stops_card,
    table_rows,
)
from dunning.durations import parse_duration
from dunning.models import Decline

STRIPE_ROWS = table_rows("stripe_decline_codes")
ADVICE_ROWS = table_rows("stripe_advice_codes")
VISA_ROWS = table_rows("visa_decline_categories")
MAC_ROWS = table_rows("mastercard_advice_codes")

VISA_EXPECTED = {
    1: (DeclineClass.do_not_retry, True, True),
    2: (DeclineClass.temporary, False, False),
    3: (DeclineClass.update_card, True, True),
    4: (DeclineClass.generic, False, False),
}


def _bool(value: str) -> bool:
    return {"true": True, "false": False}[value]


def _mentions(reasons: tuple[str, ...], *needles: str) -> bool:
    return any(all(needle in reason for needle in needles) for reason in reasons)


# --- every row of every table -------------------------------------------------------------------


@pytest.mark.parametrize("row", STRIPE_ROWS, ids=[r["decline_code"] for r in STRIPE_ROWS])
@pytest.mark.parametrize("brand", [None, "amex", "visa", "mastercard"])
def test_stripe_decline_code_row(row: dict[str, str], brand: str | None) -> None:
    verdict = classify(Decline(decline_code=row["decline_code"]), brand)
    assert verdict.decline_class == DeclineClass(row["decline_class"])
    assert verdict.stop_method is _bool(row["stop_method"])
    assert verdict.customer_action is _bool(row["customer_action"])
    assert verdict.min_delay == timedelta(0)
    assert verdict.visa_category is None
    assert verdict.unknown_codes == ()
    assert _mentions(verdict.reasons, row["decline_code"], row["source"])
    # Stripe codes alone never stop the card number itself: a replacement method may be tried.
    assert stops_card(Decline(decline_code=row["decline_code"]), brand) is False


@pytest.mark.parametrize("row", ADVICE_ROWS, ids=[r["advice_code"] for r in ADVICE_ROWS])
def test_stripe_advice_code_row(row: dict[str, str]) -> None:
    verdict = classify(Decline(advice_code=row["advice_code"]), "visa")
    assert verdict.decline_class == DeclineClass(row["decline_class"])
    assert verdict.stop_method is _bool(row["stop_method"])
    assert verdict.customer_action is _bool(row["customer_action"])
    assert verdict.min_delay == timedelta(0)
    assert verdict.unknown_codes == ()
    assert _mentions(verdict.reasons, row["advice_code"], row["source"])


@pytest.mark.parametrize(
    "row", VISA_ROWS, ids=[f"{r['code']}-cat{r['category']}" for r in VISA_ROWS]
)
def test_visa_row(row: dict[str, str]) -> None:
    decline = Decline(network_decline_code=row["code"])
    verdict = classify(decline, "visa")
    categories = {int(r["category"]) for r in VISA_ROWS if r["code"] == row["code"]}
    # A code listed in category 1 is category 1 for retries, whatever else it is (14 is also 3).
    effective = 1 if 1 in categories else int(row["category"])
    decline_class, stop, customer = VISA_EXPECTED[effective]
    assert row["retry"] == VISA_RETRY[int(row["category"])]
    assert verdict.visa_category == effective
    assert verdict.decline_class == decline_class
    assert verdict.stop_method is stop
    assert verdict.customer_action is customer
    assert stops_card(decline, "visa") is (effective == 1)
    assert verdict.unknown_codes == ()
    # Both facts stay visible: each matching row is explained with its source.
    assert _mentions(
        verdict.reasons, f"code {row['code']} (category {row['category']}", row["source"]
    )


@pytest.mark.parametrize("row", MAC_ROWS, ids=[r["code"] for r in MAC_ROWS])
def test_mastercard_row(row: dict[str, str]) -> None:
    decline = Decline(network_advice_code=row["code"])
    verdict = classify(decline, "mastercard")
    assert verdict.decline_class == DeclineClass(row["decline_class"])
    assert verdict.customer_action is _bool(row["customer_action"])
    assert verdict.stop_method is (row["action"] == "stop")
    expected_delay = parse_duration(row["min_delay"]) if row["action"] == "delay" else timedelta(0)
    assert verdict.min_delay == expected_delay
    assert stops_card(decline, "mastercard") is (
        row["action"] == "stop" and row["decline_class"] == "do_not_retry"
    )
    assert verdict.visa_category is None
    assert verdict.unknown_codes == ()
    assert _mentions(verdict.reasons, f"advice code {row['code']}", row["source"])


@pytest.mark.parametrize("name", TABLES)
def test_every_row_names_a_source(name: str) -> None:
    rows = table_rows(name)
    assert rows
    assert all(row["source"] for row in rows)


# --- the domain facts the tables must carry -----------------------------------------------------


def test_visa_categories_match_the_rules() -> None:
    by_category: dict[int, set[str]] = {}
    for row in VISA_ROWS:
        by_category.setdefault(int(row["category"]), set()).add(row["code"])
    assert by_category[1] == {
        "04",
        "07",
        "12",
        "14",
        "15",
        "41",
        "43",
        "46",
        "57",
        "R0",
        "R1",
        "R3",
    }
    assert by_category[2] == {
        "03",
        "19",
        "39",
        "51",
        "52",
        "53",
        "59",
        "61",
        "62",
        "65",
        "75",
        "78",
        "86",
        "91",
        "93",
        "96",
        "N3",
        "N4",
    }
    assert by_category[3] == {"14", "54", "55", "82", "N7", "6P"}


@pytest.mark.parametrize("code", ["03", "62", "78", "93"])
def test_codes_moved_to_category_2_in_april_2021_are_retryable(code: str) -> None:
    verdict = classify(Decline(network_decline_code=code), "visa")
    assert verdict.visa_category == 2
    assert not verdict.stop_method


@pytest.mark.parametrize("code", ["06", "01", "05", "13", "Z9"])
def test_visa_codes_outside_categories_1_to_3_are_category_4(code: str) -> None:
    verdict = classify(Decline(network_decline_code=code), "visa")
    assert verdict.visa_category == 4
    assert verdict.decline_class is DeclineClass.generic
    assert not verdict.stop_method
    assert verdict.unknown_codes == ()


def test_visa_codes_are_case_insensitive() -> None:
    assert classify(Decline(network_decline_code="n7"), "visa").visa_category == 3
    assert classify(Decline(network_decline_code=" r1 "), "Visa").visa_category == 1


@pytest.mark.parametrize(
    ("code", "delay"),
    [
        ("24", "1h"),
        ("25", "24h"),
        ("26", "2d"),
        ("27", "4d"),
        ("28", "6d"),
        ("29", "8d"),
        ("30", "10d"),
    ],
)
def test_mastercard_delay_codes(code: str, delay: str) -> None:
    verdict = classify(Decline(network_advice_code=code), "mastercard")
    assert verdict.min_delay == parse_duration(delay)
    assert not verdict.stop_method


@pytest.mark.parametrize("code", ["01", "03", "04", "21", "40", "41"])
def test_mastercard_stop_codes(code: str) -> None:
    assert classify(Decline(network_advice_code=code), "mastercard").stop_method


def test_mastercard_43_changes_nothing() -> None:
    verdict = classify(Decline(network_advice_code="43"), "mastercard")
    assert (verdict.decline_class, verdict.stop_method, verdict.min_delay) == (
        DeclineClass.generic,
        False,
        timedelta(0),
    )


def test_mastercard_02_waits_72h_by_default_and_follows_the_policy() -> None:
    decline = Decline(network_advice_code="02")
    assert classify(decline, "mastercard").min_delay == timedelta(hours=72)
    verdict = classify(decline, "mastercard", mastercard_02_delay=timedelta(days=5))
    assert verdict.min_delay == timedelta(days=5)
    assert _mentions(verdict.reasons, "MAC 02 wait set to 5d")


def test_single_digit_mastercard_code_is_padded() -> None:
    assert classify(Decline(network_advice_code="3"), "mastercard").stop_method


SMART_RETRIES_NEVER = [
    "incorrect_number",
    "lost_card",
    "pickup_card",
    "stolen_card",
    "revocation_of_authorization",
    "revocation_of_all_authorizations",
    "authentication_required",
    "highest_risk_level",
    "transaction_not_allowed",
]


@pytest.mark.parametrize("code", SMART_RETRIES_NEVER)
def test_codes_smart_retries_never_retries_stop_the_method(code: str) -> None:
    verdict = classify(Decline(decline_code=code), None)
    assert verdict.stop_method
    assert _mentions(verdict.reasons, code, "Smart Retries")


def test_stripe_table_covers_the_documented_codes() -> None:
    codes = {row["decline_code"] for row in STRIPE_ROWS}
    documented = {
        "insufficient_funds",
        "do_not_honor",
        "generic_decline",
        "lost_card",
        "stolen_card",
        "expired_card",
        "incorrect_cvc",
        "card_velocity_exceeded",
        "authentication_required",
        "pickup_card",
        "revocation_of_authorization",
        "revocation_of_all_authorizations",
        "incorrect_number",
        "highest_risk_level",
        "transaction_not_allowed",
        "card_not_supported",
        "currency_not_supported",
        "duplicate_transaction",
        "fraudulent",
        "invalid_account",
        "invalid_amount",
        "processing_error",
        "reenter_transaction",
        "try_again_later",
        "do_not_try_again",
        "approve_with_id",
        "call_issuer",
        "issuer_not_available",
        "withdrawal_count_limit_exceeded",
        "new_account_information_available",
        "restricted_card",
        "stop_payment_order",
        "security_violation",
        "service_not_allowed",
        "incorrect_zip",
        "invalid_cvc",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_number",
        "merchant_blacklist",
        "no_action_taken",
        "not_permitted",
        "testmode_decline",
    }
    assert documented <= codes
    assert len(codes) >= 45


def test_authentication_required_needs_the_customer() -> None:
    verdict = classify(Decline(decline_code="authentication_required"), "visa")
    assert verdict.decline_class is DeclineClass.authentication_required
    assert verdict.stop_method and verdict.customer_action


@pytest.mark.parametrize(
    ("code", "cls"), [("do_not_try_again", "do_not_retry"), ("try_again_later", "temporary")]
)
def test_deprecated_decline_codes_still_map(code: str, cls: str) -> None:
    verdict = classify(Decline(decline_code=code), None)
    assert verdict.decline_class == cls
    assert verdict.unknown_codes == ()


def test_stripe_codes_are_case_insensitive() -> None:
    verdict = classify(Decline(decline_code=" Insufficient_Funds "), None)
    assert verdict.decline_class is DeclineClass.insufficient_funds


# --- combinations: the strictest signal wins ----------------------------------------------------


def test_mac_stop_beats_a_retryable_decline_code() -> None:
    verdict = classify(
        Decline(decline_code="insufficient_funds", network_advice_code="03"), "mastercard"
    )
    assert verdict.decline_class is DeclineClass.do_not_retry
    assert verdict.stop_method and verdict.customer_action
    assert len(verdict.reasons) == 2


def test_mac_delay_combines_with_the_decline_class() -> None:
    verdict = classify(
        Decline(
            decline_code="insufficient_funds",
            advice_code="try_again_later",
            network_advice_code="26",
        ),
        "mastercard",
    )
    assert verdict.decline_class is DeclineClass.insufficient_funds
    assert not verdict.stop_method
    assert verdict.min_delay == timedelta(days=2)


def test_advice_code_can_stop_a_generic_decline() -> None:
    verdict = classify(
        Decline(decline_code="generic_decline", advice_code="confirm_card_data"), None
    )
    assert verdict.decline_class is DeclineClass.update_card
    assert verdict.stop_method and verdict.customer_action


def test_try_again_later_advice_does_not_lift_a_stop() -> None:
    verdict = classify(Decline(decline_code="lost_card", advice_code="try_again_later"), None)
    assert verdict.decline_class is DeclineClass.do_not_retry
    assert verdict.stop_method


def test_visa_category_1_stops_even_a_soft_stripe_code() -> None:
    decline = Decline(decline_code="do_not_honor", network_decline_code="46")
    verdict = classify(decline, "visa")
    assert verdict.visa_category == 1
    assert verdict.decline_class is DeclineClass.do_not_retry
    assert verdict.stop_method
    assert stops_card(decline, "visa")


def test_visa_category_2_keeps_the_specific_stripe_class() -> None:
    verdict = classify(
        Decline(decline_code="insufficient_funds", network_decline_code="51"), "visa"
    )
    assert verdict.visa_category == 2
    assert verdict.decline_class is DeclineClass.insufficient_funds


def test_fraud_stops_without_asking_the_customer() -> None:
    verdict = classify(Decline(decline_code="fraudulent"), None)
    assert verdict.stop_method and not verdict.customer_action


# --- unknown and missing codes ------------------------------------------------------------------


def test_no_codes_is_generic() -> None:
    verdict = classify(Decline(), "visa")
    assert verdict.decline_class is DeclineClass.generic
    assert not verdict.stop_method and not verdict.customer_action
    assert verdict.min_delay == timedelta(0)
    assert verdict.visa_category is None
    assert verdict.unknown_codes == ()
    assert verdict.reasons


@pytest.mark.parametrize(
    ("decline", "brand", "unknown"),
    [
        (Decline(decline_code="foo"), None, ("decline_code:foo",)),
        (Decline(advice_code="bar"), "visa", ("advice_code:bar",)),
        (Decline(network_advice_code="99"), "mastercard", ("network_advice_code:99",)),
        (Decline(network_decline_code="XYZ"), "visa", ("network_decline_code:XYZ",)),
        (
            Decline(decline_code="foo", advice_code="bar"),
            None,
            ("decline_code:foo", "advice_code:bar"),
        ),
    ],
)
def test_unknown_codes_are_generic_and_reported(
    decline: Decline, brand: str | None, unknown: tuple[str, ...]
) -> None:
    verdict = classify(decline, brand)
    assert verdict.unknown_codes == unknown
    assert verdict.decline_class is DeclineClass.generic
    assert not verdict.stop_method
    assert verdict.min_delay == timedelta(0)
    assert all(_mentions(verdict.reasons, code.split(":", 1)[1], "in no table") for code in unknown)


def test_unknown_code_does_not_weaken_a_known_stop() -> None:
    verdict = classify(Decline(decline_code="stolen_card", advice_code="mystery"), None)
    assert verdict.stop_method
    assert verdict.unknown_codes == ("advice_code:mystery",)


# --- brand gating -------------------------------------------------------------------------------


@pytest.mark.parametrize("brand", [None, "mastercard", "amex", "discover"])
def test_visa_codes_are_ignored_for_other_brands(brand: str | None) -> None:
    decline = Decline(network_decline_code="04")
    verdict = classify(decline, brand)
    assert verdict.visa_category is None
    assert not verdict.stop_method
    assert verdict.unknown_codes == ()
    assert not stops_card(decline, brand)


@pytest.mark.parametrize("brand", [None, "visa", "amex", "discover"])
def test_mastercard_codes_are_ignored_for_other_brands(brand: str | None) -> None:
    for code in ("03", "30"):
        verdict = classify(Decline(network_advice_code=code), brand)
        assert not verdict.stop_method
        assert verdict.min_delay == timedelta(0)
        assert verdict.unknown_codes == ()


def test_brand_spelling_is_normalised() -> None:
    assert classify(Decline(network_advice_code="03"), "MasterCard").stop_method
    assert classify(Decline(network_decline_code="04"), " VISA ").stop_method


# --- table validation ---------------------------------------------------------------------------

STRIPE_HEADER = "decline_code,decline_class,stop_method,customer_action,description,source\n"
VISA_HEADER = "code,category,retry,description,source\n"
MAC_HEADER = "code,action,min_delay,decline_class,customer_action,description,source\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,generic,false,false,d,s\nb,generic,maybe,false,d,s\n",
            "stripe_decline_codes.csv:3: stop_method",
        ),
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,soft,false,false,d,s\n",
            "stripe_decline_codes.csv:2: decline_class 'soft'",
        ),
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,generic,false,false,d,s\na,generic,false,false,d,s\n",
            "stripe_decline_codes.csv:3: duplicate",
        ),
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,do_not_retry,false,true,d,s\n",
            "stripe_decline_codes.csv:2: stop_method=false contradicts",
        ),
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,generic,false,false,d,\n",
            "stripe_decline_codes.csv:2: source is empty",
        ),
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,generic,false,false,d\n",
            "stripe_decline_codes.csv:2: expected 6 columns",
        ),
        (
            "stripe_decline_codes",
            STRIPE_HEADER + "a,generic,false,false,d,s,extra\n",
            "stripe_decline_codes.csv:2: expected 6 columns",
        ),
        (
            "stripe_decline_codes",
            "decline_code,decline_class,stop_method,description,source\n",
            "stripe_decline_codes.csv:1: header",
        ),
        (
            "stripe_advice_codes",
            "advice_code,decline_class,stop_method,customer_action,description,source\n",
            "no rows",
        ),
        (
            "visa_decline_categories",
            VISA_HEADER + "04,1,later,d,s\n",
            "visa_decline_categories.csv:2: retry",
        ),
        (
            "visa_decline_categories",
            VISA_HEADER + "04,5,never,d,s\n",
            "visa_decline_categories.csv:2: category 5",
        ),
        (
            "visa_decline_categories",
            VISA_HEADER + "4,1,never,d,s\n",
            "visa_decline_categories.csv:2: code '4'",
        ),
        (
            "visa_decline_categories",
            VISA_HEADER + "14,1,never,d,s\n14,3,after_update,d,s\n14,1,never,d,s\n",
            "visa_decline_categories.csv:4: duplicate",
        ),
        (
            "mastercard_advice_codes",
            MAC_HEADER + "02,delay,,temporary,false,d,s\n",
            "mastercard_advice_codes.csv:2: action delay needs",
        ),
        (
            "mastercard_advice_codes",
            MAC_HEADER + "02,delay,soon,temporary,false,d,s\n",
            "mastercard_advice_codes.csv:2: invalid duration",
        ),
        (
            "mastercard_advice_codes",
            MAC_HEADER + "03,stop,1h,do_not_retry,true,d,s\n",
            "mastercard_advice_codes.csv:2: min_delay must be empty",
        ),
        (
            "mastercard_advice_codes",
            MAC_HEADER + "03,halt,,do_not_retry,true,d,s\n",
            "mastercard_advice_codes.csv:2: action 'halt'",
        ),
        (
            "mastercard_advice_codes",
            MAC_HEADER + "02,delay,72h,do_not_retry,false,d,s\n",
            "mastercard_advice_codes.csv:2: stop_method=false",
        ),
    ],
)
def test_bad_rows_are_rejected_with_file_and_line(name: str, text: str, message: str) -> None:
    with pytest.raises(TableError) as raised:
        parse_table(name, text)
    assert message in str(raised.value)


def test_a_code_may_repeat_in_visa_with_another_category() -> None:
    table = parse_table(
        "visa_decline_categories", VISA_HEADER + "14,1,never,d,s\n14,3,after_update,d,s\n"
    )
    assert len(table.rows) == 2


def test_table_rows_are_copies() -> None:
    table_rows("stripe_decline_codes")[0]["decline_class"] = "generic"
    first = table_rows("stripe_decline_codes")[0]
    assert (
        classify(Decline(decline_code=first["decline_code"]), None).decline_class
        == first["decline_class"]
    )


def test_stop_classes_are_the_stopping_ones() -> None:
    for name in ("stripe_decline_codes", "stripe_advice_codes"):
        for row in table_rows(name):
            assert _bool(row["stop_method"]) is (DeclineClass(row["decline_class"]) in STOP_CLASSES)
