"""Messaging rules shared by the messaging activity and the simulator (which stands in for it)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

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
