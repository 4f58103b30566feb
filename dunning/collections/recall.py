"""Recalls: a placed customer paid, so the collection partner must stop collecting.

The journey workflow has ended by then, so the recall goes straight to the store; the next
export carries it to the partner (once), and the journey's projection timeline notes it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic_core import to_jsonable_python

from dunning.collections.placement import placement_id_for
from dunning.journey_state import TimelineEntry
from dunning.models import journey_id_for
from dunning.store import Store


def record_recall(store: Store, payment_reference: str, at: datetime, source: str) -> bool:
    """True when this call recalled the placement of `payment_reference` (an invoice or
    PaymentIntent id); False when it has no placement or was already recalled (idempotent)."""
    if not payment_reference or not payment_reference.strip():
        raise ValueError("payment_reference is empty: pass the Stripe invoice (in_…) or PaymentIntent (pi_…) id")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at={at!r} is naive: pass an aware datetime, e.g. datetime.now(UTC)")
    if not source or not source.strip():
        raise ValueError("source is empty: say where the payment was seen, e.g. invoice.paid or ops")
    journey_id = journey_id_for(payment_reference.strip())
    entry = TimelineEntry(
        at=at,
        kind="recall",
        text=(
            f"paid after the hand-off ({source}): placement {placement_id_for(journey_id)} "
            "is recalled from the collection partner in the next export"
        ),
    )
    _, recalled = store.mark_recalled(
        journey_id, at=at, source=source.strip(), timeline_entry=to_jsonable_python(entry)
    )
    return recalled
