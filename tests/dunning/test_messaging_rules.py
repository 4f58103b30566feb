from datetime import UTC, datetime, timedelta

import pytest

from dunning.enums import Channel
from dunning.messaging import next_allowed, recipient, unreachable, usable_email
from dunning.models import Customer

AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def hours_before(*hours: float) -> list[datetime]:
    return sorted(AT - timedelta(hours=h) for h in hours)


@pytest.mark.parametrize(
    ("sent", "per_24h", "per_7d", "expected"),
    [
        ([], 1, 3, AT),
        (hours_before(30), 1, 3, AT),  # outside the 24 hours: only the 7-day cap counts it
        (hours_before(5), 1, 3, AT + timedelta(hours=19)),  # waits until that message is 24 h old
        (hours_before(5), 2, 3, AT),  # below the daily cap
        (hours_before(20, 5), 2, 5, AT + timedelta(hours=4)),  # the older of the two leaves first
        (hours_before(30, 50, 100), 1, 3, AT + timedelta(days=7) - timedelta(hours=100)),
        # the daily cap moves it past midnight, then the weekly one moves it again
        (hours_before(2, 60, 130), 1, 3, AT + timedelta(days=7) - timedelta(hours=130)),
        (hours_before(10, 30), 1, 2, AT + timedelta(days=7) - timedelta(hours=30)),
    ],
)
def test_next_allowed_waits_until_each_full_cap_window_frees_up(
    sent: list[datetime], per_24h: int, per_7d: int, expected: datetime
) -> None:
    assert next_allowed(sent, AT, per_24h, per_7d) == expected


def test_next_allowed_is_never_earlier_than_asked() -> None:
    assert next_allowed(hours_before(200, 300), AT, 1, 1) == AT


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("ana@example.com", "ana@example.com"),
        ("  ana@example.com ", "ana@example.com"),
        ("ana@localhost", None),
        ("@example.com", None),
        ("ana maria@example.com", None),
        ("", None),
        (None, None),
    ],
)
def test_usable_email(email: str | None, expected: str | None) -> None:
    assert usable_email(email) == expected


@pytest.mark.parametrize(
    ("channel", "customer", "expected"),
    [
        (Channel.email, Customer(id="cus_1", email=" ana@example.com"), "ana@example.com"),
        (Channel.email, Customer(id="cus_1", email="ana@localhost"), None),
        (Channel.sms, Customer(id="cus_1", phone="0712 345 678", country="ro"), "+40712345678"),
        (Channel.sms, Customer(id="cus_1", phone="12345"), None),
        (Channel.sms, Customer(id="cus_1"), None),
        (Channel.in_app, Customer(id="cus_1"), "cus_1"),
    ],
)
def test_recipient_is_a_usable_address_or_none(channel: Channel, customer: Customer, expected: str | None) -> None:
    assert recipient(customer, channel) == expected


def test_unreachable_names_the_missing_address() -> None:
    assert unreachable(Customer(id="cus_1"), Channel.sms) == "no valid mobile number for customer cus_1"
    assert unreachable(Customer(id="cus_1"), Channel.email) == "no valid email address for customer cus_1"
