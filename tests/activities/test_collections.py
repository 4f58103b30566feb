"""Collections activities on a real store: placement at hand-off, batch build and delivery."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.collections import CollectionsActivities
from dunning.collections.config import CollectionsConfig
from dunning.collections.export import BuildExport
from dunning.collections.placement import AttemptsSummary, MessagesSummary, PlacementRequest
from dunning.models import Customer
from dunning.store import Store

PLACED_AT = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def request(ref: str = "in_1", **extra) -> PlacementRequest:
    values = {
        "journey_id": f"dunning-{ref}",
        "payment_reference": ref,
        "customer": Customer(
            id=f"cus_{ref}", name="Ana Pop", email="ana@example.com", phone="+40712345678",
            country="RO", timezone="Europe/Bucharest", locale="ro",
        ),
        "amount": 4200,
        "currency": "usd",
        "original_due_date": PLACED_AT - timedelta(days=61),
        "first_failure_at": PLACED_AT - timedelta(days=60),
        "attempts": AttemptsSummary(count=9, last_decline_class="insufficient_funds", last_attempt_at=PLACED_AT - timedelta(days=10)),
        "messages": MessagesSummary(count_by_channel={"email": 6, "sms": 3}, last_sent_at=PLACED_AT - timedelta(days=15)),
        "disputed": True,
        "policy_version": "default@abc",
        "placed_at": PLACED_AT,
    }
    return PlacementRequest(**{**values, **extra})


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    return tmp_path / "exports"


@pytest.fixture
def activities(store: Store, exports: Path) -> CollectionsActivities:
    return CollectionsActivities(store, CollectionsConfig(export_url=exports.as_uri(), partner_fields=("email", "country")))


def test_place_stores_the_agreed_contact_fields_once(activities: CollectionsActivities, store: Store):
    env = ActivityEnvironment()
    first = env.run(activities.place, request())
    again = env.run(activities.place, request(amount=1))
    assert first.created and not again.created and again.placement_id == first.placement_id
    stored = store.placement_for_journey("dunning-in_1")
    assert stored.contact == {"email": "ana@example.com", "country": "RO"}, "only DUNNING_PARTNER_FIELDS"
    assert (stored.amount, stored.currency, stored.payment_reference, stored.customer_id) == (4200, "usd", "in_1", "cus_in_1")
    assert stored.attempts_summary == {"count": 9, "last_decline_class": "insufficient_funds", "last_attempt_at": "2026-10-22T10:00:00Z"}
    assert stored.messages_summary == {"count_by_channel": {"email": 6, "sms": 3}, "last_sent_at": "2026-10-17T10:00:00Z"}
    assert stored.disputed and stored.policy_version == "default@abc" and stored.created_at == PLACED_AT
    assert stored.first_failure_at == PLACED_AT - timedelta(days=60) and stored.export_id is None


def test_build_fixes_the_batch_and_delivery_writes_what_was_built(activities: CollectionsActivities, store: Store, exports: Path):
    env = ActivityEnvironment()
    env.run(activities.place, request("in_1"))
    env.run(activities.place, request("in_2", currency="eur"))
    at = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
    batch = env.run(activities.build_export, BuildExport(at=at))
    assert (batch.export_id, batch.business_date, batch.placements, batch.recalls) == ("exp-2026-11-02", date(2026, 11, 2), 2, 0)
    env.run(activities.place, request("in_3"))
    assert env.run(activities.build_export, BuildExport(at=at)) == batch, "members fixed at the first build"

    result = env.run(activities.deliver_export, batch.export_id)
    assert result.files == batch.files and result.destination == exports.as_uri()
    manifest = json.loads((exports / "manifest-2026-11-02.json").read_bytes())
    assert manifest["placements"] == {"count": 2, "amount_by_currency": {"eur": 4200, "usd": 4200}}
    assert store.get_export("exp-2026-11-02").delivered_at == result.delivered_at


def test_business_date_follows_the_merchant_zone(store: Store, exports: Path):
    activities = CollectionsActivities(store, CollectionsConfig(export_url=exports.as_uri(), merchant_timezone="Asia/Tokyo"))
    batch = ActivityEnvironment().run(activities.build_export, BuildExport(at=datetime(2026, 11, 1, 17, 0, tzinfo=UTC)))
    assert batch.business_date == date(2026, 11, 2)
    explicit = ActivityEnvironment().run(activities.build_export, BuildExport(business_date=date(2026, 10, 30), at=PLACED_AT))
    assert explicit.export_id == "exp-2026-10-30"


def test_delivery_refuses_a_batch_that_no_longer_renders_as_built(activities: CollectionsActivities, store: Store):
    env = ActivityEnvironment()
    env.run(activities.place, request("in_1"))
    batch = env.run(activities.build_export, BuildExport(at=PLACED_AT))
    with store._write() as session:  # simulate a placement edited behind the exporter's back
        from dunning.store.schema import Placement

        session.get(Placement, store.placement_for_journey("dunning-in_1").placement_id).amount = 1
    with pytest.raises(ApplicationError, match="no longer renders the bytes recorded") as caught:
        env.run(activities.deliver_export, batch.export_id)
    assert caught.value.non_retryable and caught.value.type == "ExportRefused"
    with pytest.raises(ApplicationError, match="no export 'exp-nope'"):
        env.run(activities.deliver_export, "exp-nope")
