"""Placements, export batches, recalls and reconciliation in the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from dunning.collections import placement_id_for, record_recall
from dunning.collections.reconciliation import ReconciliationError, apply_reconciliation, import_file
from dunning.enums import Stage
from dunning.store import JourneyRecord, Store
from dunning.store.records import PlacementRecord

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
D1, D2, D3 = date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)


def placement(ref: str = "in_1", *, at: datetime = T0, amount: int = 4900, currency: str = "usd", **extra) -> PlacementRecord:
    journey_id = f"dunning-{ref}"
    values = {
        "placement_id": placement_id_for(journey_id),
        "journey_id": journey_id,
        "payment_reference": ref,
        "customer_id": f"cus_{ref}",
        "contact": {"name": "Ada Lovelace", "email": "ada@example.com"},
        "amount": amount,
        "currency": currency,
        "original_due_date": T0 - timedelta(days=61),
        "first_failure_at": T0 - timedelta(days=60),
        "attempts_summary": {"count": 9, "last_decline_class": "insufficient_funds", "last_attempt_at": "2026-10-20T09:00:00Z"},
        "messages_summary": {"count_by_channel": {"email": 5, "sms": 2}, "last_sent_at": "2026-10-18T10:00:00Z"},
        "disputed": False,
        "policy_version": "default@abc",
        "created_at": at,
    }
    return PlacementRecord(**{**values, **extra})


def claim(store: Store, day: date):
    export, placements, recalls = store.claim_export(export_id=f"exp-{day}", business_date=day, at=T0)
    return export, [p.payment_reference for p in placements], [p.payment_reference for p in recalls]


def test_create_placement_is_idempotent_by_journey(store: Store) -> None:
    first, created = store.create_placement(placement())
    assert created and first.placement_id == placement_id_for("dunning-in_1")
    again, created = store.create_placement(placement(contact={"email": "changed@example.com"}, amount=1))
    assert not created and again == first, "a retry never changes the placement"
    assert store.placement_for_journey("dunning-in_1") == first
    assert store.get_placement(first.placement_id) == first
    assert [p.placement_id for p in store.list_placements()] == [first.placement_id]


def test_batch_membership_is_fixed_at_the_first_build(store: Store) -> None:
    store.create_placement(placement("in_1", at=T0))
    store.create_placement(placement("in_2", at=T0 - timedelta(hours=1)))
    export, placed, recalled = claim(store, D1)
    assert export.export_id == "exp-2026-11-02" and placed == ["in_2", "in_1"] and recalled == []

    store.create_placement(placement("in_3", at=T0 + timedelta(hours=1)))
    assert claim(store, D1)[1:] == (["in_2", "in_1"], []), "a re-run of D1 has the same members"
    assert claim(store, D2)[1:] == (["in_3"], [])
    assert claim(store, D2)[1:] == (["in_3"], [])
    assert claim(store, D3)[1:] == ([], [])
    assert store.export_batch("exp-2026-11-03")[1][0].payment_reference == "in_3"
    assert store.export_batch("exp-missing") is None
    assert [e.business_date for e in store.list_exports()] == [D3, D2, D1]


def test_concurrent_first_builds_of_one_date_agree(store: Store) -> None:
    # Many dates, each built by several threads at once: on PostgreSQL the losers of a race trip
    # either the export id's key or the date's index first, and neither may fail the build.
    for day_number in range(30):
        day = D1 + timedelta(days=day_number)
        for n in range(3):
            store.create_placement(placement(f"in_{day_number}_{n}", at=T0 + timedelta(days=day_number, minutes=n)))
        results: list = []
        barrier = threading.Barrier(6)

        def build() -> None:
            barrier.wait(timeout=10)
            results.append(claim(store, day)[1])

        threads = [threading.Thread(target=build) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        expected = [f"in_{day_number}_{n}" for n in range(3)]
        assert len(results) == 6 and all(r == expected for r in results), f"{day}: {results}"


def test_a_recall_is_in_the_next_batch_once(store: Store) -> None:
    store.create_placement(placement("in_1"))
    claim(store, D1)
    paid_at = T0 + timedelta(days=1, hours=3)
    assert record_recall(store, "in_1", paid_at, "invoice.paid") is True
    assert record_recall(store, "in_1", paid_at + timedelta(hours=1), "ops") is False, "idempotent"
    stored = store.placement_for_journey("dunning-in_1")
    assert stored.recalled_at == paid_at and stored.recall_source == "invoice.paid"

    assert claim(store, D2)[1:] == ([], ["in_1"])
    assert claim(store, D2)[1:] == ([], ["in_1"])
    assert claim(store, D3)[1:] == ([], []), "never twice"


def test_a_placement_paid_before_its_first_export_is_never_sent(store: Store) -> None:
    store.create_placement(placement("in_1"))
    assert record_recall(store, "in_1", T0 + timedelta(hours=2), "invoice.paid") is True
    assert claim(store, D1)[1:] == ([], [])
    assert claim(store, D2)[1:] == ([], [])


def test_recall_notes_the_journey_timeline_and_survives_stale_projections(store: Store) -> None:
    row = JourneyRecord(
        journey_id="dunning-in_1",
        payment_reference="in_1",
        payment_kind="invoice",
        customer_id="cus_in_1",
        stage=Stage.handed_off,
        amount=4900,
        currency="usd",
        started_at=T0 - timedelta(days=60),
        updated_at=T0,
        ended_at=T0,
        timeline=[{"at": "2026-11-01T10:00:00Z", "kind": "escalation", "text": "hand_off (hand-off): ..."}],
    )
    store.upsert_journey(row)
    store.create_placement(placement("in_1"))
    paid_at = T0 + timedelta(days=2)
    assert record_recall(store, "in_1", paid_at, "invoice.paid")
    journey = store.get_journey("dunning-in_1")
    assert [e["kind"] for e in journey.timeline] == ["escalation", "recall"]
    recall = journey.timeline[-1]
    assert recall["at"] == "2026-11-03T10:00:00Z"
    assert "invoice.paid" in recall["text"] and placement_id_for("dunning-in_1") in recall["text"]
    store.upsert_journey(row)  # a late, older projection of the ended journey
    assert [e["kind"] for e in store.get_journey("dunning-in_1").timeline] == ["escalation", "recall"]


def test_record_recall_without_a_placement_and_bad_input(store: Store) -> None:
    assert record_recall(store, "in_never_placed", T0, "invoice.paid") is False
    with pytest.raises(ValueError, match="payment_reference is empty"):
        record_recall(store, " ", T0, "invoice.paid")
    with pytest.raises(ValueError, match="naive"):
        record_recall(store, "in_1", datetime(2026, 11, 1), "invoice.paid")
    with pytest.raises(ValueError, match="source is empty"):
        record_recall(store, "in_1", T0, "")


def test_export_files_are_recorded_once_and_a_different_rendering_is_refused(store: Store) -> None:
    claim(store, D1)
    files = [{"name": "placements-2026-11-02.csv", "sha256": "a" * 64}]
    store.record_export_files("exp-2026-11-02", files, {"placements": {"count": 0}})
    assert store.record_export_files("exp-2026-11-02", files, {"placements": {"count": 0}}).files == files
    with pytest.raises(ValueError, match="renders differently"):
        store.record_export_files("exp-2026-11-02", [{"name": "x", "sha256": "b" * 64}], {})
    delivered = store.mark_export_delivered("exp-2026-11-02", destination="file:///tmp/x", at=T0)
    assert delivered.delivered_at == T0 and delivered.destination == "file:///tmp/x"


# -- reconciliation ------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def seed(store: Store) -> tuple[str, str, str]:
    ids = []
    for ref, amount, currency in (("in_1", 4900, "usd"), ("in_2", 10000, "eur"), ("in_3", 2500, "usd")):
        ids.append(store.create_placement(placement(ref, amount=amount, currency=currency))[0].placement_id)
    return ids[0], ids[1], ids[2]


def test_reconciliation_updates_placements_and_the_summary(store: Store, tmp_path: Path) -> None:
    p1, p2, p3 = seed(store)
    report = tmp_path / "report.csv"
    report.write_text(
        "placement_id,collected_amount,currency,date,status\n"
        f"{p1},4900,USD,2026-11-20,collected\n"
        f"{p2},2500,eur,2026-11-21,partial\n"
        f"\n"
        f"{p3},0,usd,2026-11-22,uncollectible\n",
        encoding="utf-8",
    )
    assert import_file(store, report, at=NOW) == 3
    assert import_file(store, report, at=NOW) == 3, "a re-import is idempotent (totals to date)"
    first = store.get_placement(p1)
    assert (first.collection_status, first.collected_amount, first.collected_on) == ("collected", 4900, date(2026, 11, 20))
    assert first.reconciled_at == NOW
    summary = {row["currency"]: row for row in store.collections_summary()}
    assert summary["usd"]["placements"] == 2 and summary["usd"]["placed_amount"] == 7400
    assert summary["usd"]["collected_amount"] == 4900
    assert summary["usd"]["statuses"] == {"collected": 1, "partial": 0, "uncollectible": 1, "disputed": 0}
    assert summary["eur"]["collected_amount"] == 2500 and summary["eur"]["statuses"]["partial"] == 1


def test_one_bad_row_refuses_the_whole_file_with_every_problem(store: Store) -> None:
    p1, p2, p3 = seed(store)
    text = (
        "placement_id,collected_amount,currency,date,status\n"
        f"{p1},4900,usd,2026-11-20,collected\n"  # fine, but must not be applied
        f"{p2},12.50,eur,2026-13-01,paid\n"
        f"plc_00000000000000000000,100,usd,2026-11-20,partial\n"
        f"{p3},2500,eur,2026-11-20,collected\n"
        f"{p1},4900,usd,2026-11-20,collected\n"
    )
    with pytest.raises(ReconciliationError) as caught:
        apply_reconciliation(store, text, at=NOW)
    found = {(e.line, e.column) for e in caught.value.errors}
    assert found == {(3, "collected_amount"), (3, "date"), (3, "status"), (6, "placement_id")}
    amount_error = next(e for e in caught.value.errors if e.column == "collected_amount")
    assert "'12.50' is not a whole number" in amount_error.problem and "1250" in amount_error.fix
    assert caught.value.errors[-1].problem.endswith("is also on line 2")
    assert store.get_placement(p1).collection_status is None, "nothing was applied"

    # The shape is fine now; the placements themselves disagree with rows 3 and 4.
    text = (
        "placement_id,collected_amount,currency,date,status\n"
        f"{p1},4900,usd,2026-11-20,collected\n"
        f"plc_00000000000000000000,100,usd,2026-11-20,partial\n"
        f"{p3},2500,eur,2026-11-20,collected\n"
        f"{p2},10000,eur,2026-11-20,partial\n"
        f"{p2[:-1]}x,1,eur,2026-11-20,disputed\n"
    )
    with pytest.raises(ReconciliationError) as caught:
        apply_reconciliation(store, text, at=NOW)
    problems = {(e.line, e.column): e.problem for e in caught.value.errors}
    assert set(problems) == {(3, "placement_id"), (4, "currency"), (5, "status"), (6, "placement_id")}
    assert problems[(4, "currency")] == "eur does not match the placement's usd"
    assert "partial needs 0 < collected_amount < 10000" in problems[(5, "status")]
    assert "nothing was applied" in str(caught.value)
    assert store.get_placement(p1).collection_status is None


@pytest.mark.parametrize(
    ("text", "line", "column", "problem"),
    [
        ("", 1, "(header)", "the file is empty"),
        ("placement_id,collected_amount,currency,date\n", 1, "status", "missing column"),
        ("placement_id,collected_amount,currency,date,status,note\n", 1, "note", "unknown column"),
        ("placement_id,collected_amount,currency,date,status\n", 2, "(row)", "the file has no rows"),
        ("placement_id,collected_amount,currency,date,status\nplc_1,1,usd\n", 2, "(row)", "3 fields, the header has 5"),
        ("placement_id,collected_amount,currency,date,status\nplc_1,-5,usd,2026-11-01,partial\n", 2, "collected_amount", "'-5' is not a whole number of minor units"),
        ("placement_id,collected_amount,currency,date,status\nplc_1,5,dollars,2026-11-01,partial\n", 2, "currency", "'dollars' is not a currency code"),
        ("placement_id,collected_amount,currency,date,status\nplc_1,5,usd,2027-01-01,partial\n", 2, "date", "2027-01-01 is in the future"),
        ("placement_id,collected_amount,currency,date,status\n,5,usd,2026-11-01,partial\n", 2, "placement_id", "empty"),
    ],
)
def test_file_shape_errors_name_line_column_and_fix(store: Store, text, line, column, problem) -> None:
    with pytest.raises(ReconciliationError) as caught:
        apply_reconciliation(store, text, at=NOW)
    error = caught.value.errors[0]
    assert (error.line, error.column, error.problem) == (line, column, problem)
    assert error.fix


def test_a_spreadsheet_bom_and_crlf_are_fine(store: Store) -> None:
    p1, _, _ = seed(store)
    text = "\ufeffplacement_id,collected_amount,currency,date,status\r\n" f"{p1},0,usd,2026-11-20,disputed\r\n"
    assert apply_reconciliation(store, text, at=NOW) == 1
    assert store.get_placement(p1).collection_status == "disputed"


def test_a_file_that_is_not_utf8_is_refused(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("placement_id,collected_amount,currency,date,status\nplc_é,1,usd,2026-11-01,partial\n".encode("latin-1"))
    with pytest.raises(ReconciliationError, match="not UTF-8"):
        import_file(store, path, at=NOW)
