"""The export files: deterministic bytes, documented columns, every record valid against the schema."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, date, datetime, timedelta

import jsonschema
import pytest

from dunning.collections.config import (
    CollectionsConfig,
    CollectionsConfigError,
    parse_export_time,
    parse_partner_fields,
    parse_timezone,
)
from dunning.collections.export import business_date_for
from dunning.collections.format import (
    PLACEMENT_COLUMNS,
    RECALL_COLUMNS,
    ExportFormatError,
    render_batch,
)
from dunning.collections.placement import placement_id_for
from dunning.collections.schema import RECORD_SCHEMA, schema_text, validation_errors
from dunning.store.records import PlacementRecord
from tests.support import ROOT

T0 = datetime(2026, 11, 1, 10, 0, 30, 123456, tzinfo=UTC)
DAY = date(2026, 11, 2)


def placement(ref: str, *, at: datetime = T0, **extra) -> PlacementRecord:
    values = {
        "placement_id": placement_id_for(f"dunning-{ref}"),
        "journey_id": f"dunning-{ref}",
        "payment_reference": ref,
        "customer_id": f"cus_{ref}",
        "contact": {"name": "Ana, \"Pop\"", "email": "ana@example.com", "phone": "+40712345678", "country": None},
        "amount": 4200,
        "currency": "usd",
        "original_due_date": datetime(2026, 9, 1, 23, 0, tzinfo=UTC),
        "first_failure_at": datetime(2026, 9, 2, 8, 0, tzinfo=UTC),
        "attempts_summary": {"count": 9, "last_decline_class": "insufficient_funds", "last_attempt_at": "2026-10-20T09:00:00Z"},
        "messages_summary": {"count_by_channel": {"email": 6, "sms": 3}, "last_sent_at": "2026-10-17T07:00:00Z"},
        "disputed": False,
        "policy_version": "default@0123456789ab",
        "created_at": at,
    }
    return PlacementRecord(**{**values, **extra})


def batch():
    placements = [
        placement("in_b", at=T0 + timedelta(hours=1), amount=10000, currency="eur", contact={"name": "山田 花子"}),
        placement("in_a"),
    ]
    recalls = [placement("in_old", recalled_at=T0 + timedelta(hours=5), recall_source="invoice.paid", export_id="exp-x")]
    return render_batch("exp-2026-11-02", DAY, placements, recalls)


def test_files_names_order_and_manifest():
    rendered = batch()
    assert [f.name for f in rendered.files] == [
        "placements-2026-11-02.csv",
        "placements-2026-11-02.jsonl",
        "recalls-2026-11-02.csv",
        "recalls-2026-11-02.jsonl",
        "manifest-2026-11-02.json",
    ]
    manifest = json.loads(rendered.manifest_file.content)
    assert manifest == rendered.manifest
    assert manifest["format"] == "dunning-collections" and manifest["format_version"] == 1
    assert manifest["business_date"] == "2026-11-02" and manifest["export_id"] == "exp-2026-11-02"
    assert manifest["placements"] == {"count": 2, "amount_by_currency": {"eur": 10000, "usd": 4200}}
    assert manifest["recalls"] == {"count": 1, "amount_by_currency": {"usd": 4200}}
    for entry, file in zip(manifest["files"], rendered.files[:-1], strict=True):
        assert entry["name"] == file.name
        assert entry["sha256"] == hashlib.sha256(file.content).hexdigest()
        assert entry["bytes"] == len(file.content)
    assert [e["records"] for e in manifest["files"]] == [2, 2, 1, 1]


def test_rendering_is_byte_identical_whatever_the_input_order():
    first = batch()
    placements = [placement("in_a"), placement("in_b", at=T0 + timedelta(hours=1), amount=10000, currency="eur", contact={"name": "山田 花子"})]
    recalls = [placement("in_old", recalled_at=T0 + timedelta(hours=5), recall_source="invoice.paid", export_id="exp-x")]
    second = render_batch("exp-2026-11-02", DAY, list(reversed(placements)), recalls)
    assert [f.content for f in first.files] == [f.content for f in second.files]


def test_csv_columns_and_values():
    rendered = batch()
    raw = rendered.files[0].content
    assert raw.startswith(b"placement_id,") and b"\r\n" in raw and not raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert tuple(rows[0]) == PLACEMENT_COLUMNS
    first, second = rows  # ordered by placement time
    assert first["payment_reference"] == "in_a" and second["payment_reference"] == "in_b"
    assert first["contact_name"] == 'Ana, "Pop"' and first["contact_phone"] == "+40712345678"
    assert first["contact_country"] == "" and first["contact_locale"] == ""
    assert second["contact_name"] == "山田 花子" and second["contact_email"] == ""
    assert first["amount"] == "4200" and first["currency"] == "usd"
    assert first["original_due_date"] == "2026-09-01" and first["first_failure_at"] == "2026-09-02T08:00:00Z"
    assert first["placed_at"] == "2026-11-01T10:00:30Z", "seconds, UTC, no run timestamps"
    assert (first["attempts_count"], first["last_decline_class"]) == ("9", "insufficient_funds")
    assert (first["messages_sent_email"], first["messages_sent_sms"], first["messages_sent_in_app"]) == ("6", "3", "0")
    assert first["disputed"] == "false"
    recalls = list(csv.DictReader(io.StringIO(rendered.files[2].content.decode(), newline="")))
    assert tuple(recalls[0]) == RECALL_COLUMNS
    assert recalls[0]["recalled_at"] == "2026-11-01T15:00:30Z" and recalls[0]["source"] == "invoice.paid"
    assert recalls[0]["reason"] == "paid"


def test_every_jsonl_record_validates_against_the_published_schema():
    rendered = batch()
    validator = jsonschema.Draft202012Validator(RECORD_SCHEMA, format_checker=jsonschema.FormatChecker())
    records = [json.loads(line) for f in rendered.files if f.name.endswith(".jsonl") for line in f.content.splitlines()]
    assert [r["record_type"] for r in records] == ["placement", "placement", "recall"]
    for record in records:
        validator.validate(record)
    assert list(records[0]) == [
        "record_type", "placement_id", "journey_id", "payment_reference", "customer_id", "contact", "amount",
        "currency", "original_due_date", "first_failure_at", "attempts", "messages", "disputed",
        "policy_version", "placed_at",
    ]
    assert records[0]["contact"] == {"name": 'Ana, "Pop"', "email": "ana@example.com", "phone": "+40712345678", "country": None}
    assert records[0]["messages"]["sent_by_channel"] == {"email": 6, "sms": 3, "in_app": 0}


def test_empty_batch_still_has_every_file():
    rendered = render_batch("exp-2026-11-02", DAY, [], [])
    assert rendered.files[0].content == (",".join(PLACEMENT_COLUMNS) + "\r\n").encode()
    assert rendered.files[1].content == b"" and rendered.manifest["placements"] == {"count": 0, "amount_by_currency": {}}


def test_a_record_outside_the_schema_is_refused_naming_it():
    bad = placement("in_bad", currency="US")
    with pytest.raises(ExportFormatError, match=r"placement plc_[0-9a-f]{20} does not match the export schema: currency"):
        render_batch("exp-2026-11-02", DAY, [bad], [])
    assert validation_errors({"record_type": "refund"}) == ["record_type: 'refund' is not one of ['placement', 'recall']"]


def test_the_documented_schema_is_the_one_the_exporter_uses():
    jsonschema.Draft202012Validator.check_schema(RECORD_SCHEMA)
    assert (ROOT / "docs" / "collections-placement.schema.json").read_text(encoding="utf-8") == schema_text()


def test_settings_are_checked_with_a_fix():
    assert parse_partner_fields(" Name, email ,phone,email") == ("name", "email", "phone")
    assert parse_partner_fields("") == ()
    with pytest.raises(CollectionsConfigError, match=r"unknown contact field\(s\) 'adress'.*name,email,phone,country,locale,timezone"):
        parse_partner_fields("name,adress")
    with pytest.raises(CollectionsConfigError, match="DUNNING_MERCHANT_TIMEZONE: 'Mars/Base' is not an IANA time zone"):
        parse_timezone("Mars/Base")
    assert parse_export_time("2:05").isoformat() == "02:05:00"
    with pytest.raises(CollectionsConfigError, match="DUNNING_EXPORT_TIME: '25:00' is not a time of day"):
        parse_export_time("25:00")
    with pytest.raises(CollectionsConfigError, match="partner_fields"):
        CollectionsConfig(export_url="file:///tmp", partner_fields=("iban",))


def test_business_date_is_the_merchants_calendar_date():
    assert business_date_for(datetime(2026, 11, 2, 1, 0, tzinfo=UTC), "UTC") == date(2026, 11, 2)
    assert business_date_for(datetime(2026, 11, 1, 23, 0, tzinfo=UTC), "Europe/Bucharest") == date(2026, 11, 2)
    assert business_date_for(datetime(2026, 11, 2, 3, 0, tzinfo=UTC), "America/New_York") == date(2026, 11, 1)
