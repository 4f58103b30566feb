"""Messaging rules shared by the messaging activity and the simulator (which stands in for it)."""

from __future__ import annotations

# The payment receipt confirms what the customer did: it never counts towards the frequency caps.
CAP_EXEMPT_TEMPLATES = frozenset({"payment_recovered"})


def usable_email(email: str | None) -> str | None:
    """The address, stripped, when it can take a message: something@domain.tld, no spaces."""
    email = (email or "").strip()
    local, _, domain = email.rpartition("@")
    return email if local and "." in domain and " " not in email else None
