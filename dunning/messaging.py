"""Messaging rules shared by the messaging activities and the simulator (which stands in for them)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import lru_cache

import phonenumbers

from dunning.enums import Channel
from dunning.models import Customer
from dunning.timing import valid_phone_number

# The payment receipt confirms what the customer did: it never counts towards the frequency caps.
CAP_EXEMPT_TEMPLATES = frozenset({"payment_recovered"})
CAP_24H, CAP_7D = timedelta(hours=24), timedelta(days=7)  # the frequency caps' spans


def next_allowed(sent: Sequence[datetime], at: datetime, max_per_24h: int, max_per_7d: int) -> datetime:
    """When a message due at `at` may go out under the frequency caps; `sent` in time order."""
    allowed = at
    for span, cap in ((CAP_24H, max_per_24h), (CAP_7D, max_per_7d)):
        if len(sent) < cap:  # too few messages to reach the cap, in any span
            continue
        since = allowed - span
        recent = [t for t in sent if t > since]
        if len(recent) >= cap:
            # the oldest message that keeps the window full must leave it first
            allowed = max(allowed, recent[len(recent) - cap] + span)
    return allowed


def usable_email(email: str | None) -> str | None:
    """The address, stripped, when it can take a message: something@domain.tld, no spaces."""
    email = (email or "").strip()
    local, _, domain = email.rpartition("@")
    return email if local and "." in domain and " " not in email else None


# Asked for every SMS (and by the simulator for every one it stands in for): parsed once per number.
@lru_cache(maxsize=4096)
def normalize_phone(phone: str | None, country: str | None = None) -> str | None:
    """E.164 when the number is valid (national numbers use the customer's country), else None."""
    number = valid_phone_number(phone, country) if phone else None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if number is not None else None


def recipient(customer: Customer, channel: Channel) -> str | None:
    """Where a message on `channel` goes: a usable address, the customer id in the app; None
    when the customer cannot be reached there."""
    if channel is Channel.email:
        return usable_email(customer.email)
    if channel is Channel.sms:
        return normalize_phone(customer.phone, customer.country)
    return customer.id


def unreachable(customer: Customer, channel: Channel) -> str:
    """Why a message on `channel` cannot go out when `recipient` finds no address."""
    word = {Channel.email: "email address", Channel.sms: "mobile number"}.get(channel, "recipient")
    return f"no valid {word} for customer {customer.id}"


def frequency_capped(customer: Customer, allowed: datetime) -> str:
    """Why a message waits when `next_allowed` is later than it was due."""
    return (
        f"frequency cap: customer {customer.id} already got the maximum number of messages "
        f"across journeys; next allowed at {allowed.isoformat()}"
    )
