"""The export batch as bytes: CSV and JSON Lines per record type, plus a manifest.

Everything is a pure function of the batch's stored members: fixed column and key order,
fixed number formats, members ordered by time then id, and no time of the run anywhere, so
re-running a business date re-delivers identical bytes (docs/collections-format.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import Any

from dunning.collections.config import CONTACT_FIELDS
from dunning.collections.schema import FORMAT_VERSION, validation_errors
from dunning.enums import Channel
from dunning.store.records import PlacementRecord

CHANNELS: tuple[str, ...] = tuple(channel.value for channel in Channel)

PLACEMENT_COLUMNS: tuple[str, ...] = (
    "placement_id",
    "journey_id",
    "payment_reference",
    "customer_id",
    *(f"contact_{name}" for name in CONTACT_FIELDS),
    "amount",
    "currency",
    "original_due_date",
    "first_failure_at",
    "attempts_count",
    "last_decline_class",
    "last_attempt_at",
    *(f"messages_sent_{channel}" for channel in CHANNELS),
    "last_message_sent_at",
    "disputed",
    "policy_version",
    "placed_at",
)
RECALL_COLUMNS: tuple[str, ...] = (
    "placement_id",
    "journey_id",
    "payment_reference",
    "customer_id",
    "amount",
    "currency",
    "recalled_at",
    "reason",
    "source",
)


class ExportFormatError(ValueError):
    """A stored placement that cannot be exported as documented (names the placement and field)."""


@dataclass(frozen=True)
class ExportFile:
    name: str
    media_type: str
    content: bytes
    records: int

    @cached_property  # read by the manifest, the stored digests and every delivery header
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "media_type": self.media_type,
            "records": self.records,
            "bytes": len(self.content),
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class RenderedBatch:
    export_id: str
    business_date: date
    files: tuple[ExportFile, ...]  # data files first, the manifest last
    manifest: dict[str, Any]

    @property
    def manifest_file(self) -> ExportFile:
        return self.files[-1]


def export_id_for(business_date: date) -> str:
    return f"exp-{business_date.isoformat()}"


def file_names(business_date: date) -> dict[str, str]:
    day = business_date.isoformat()
    return {
        "placements_csv": f"placements-{day}.csv",
        "placements_jsonl": f"placements-{day}.jsonl",
        "recalls_csv": f"recalls-{day}.csv",
        "recalls_jsonl": f"recalls-{day}.jsonl",
        "manifest": f"manifest-{day}.json",
    }


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _payment_reference(placement: PlacementRecord) -> str:
    if placement.payment_reference:
        return placement.payment_reference
    prefix = "dunning-"  # journey ids are dunning-<payment reference>
    return placement.journey_id[len(prefix):] if placement.journey_id.startswith(prefix) else placement.journey_id


def placement_record(placement: PlacementRecord) -> dict[str, Any]:
    attempts, messages = placement.attempts_summary, placement.messages_summary
    sent = messages.get("count_by_channel") or {}
    return {
        "record_type": "placement",
        "placement_id": placement.placement_id,
        "journey_id": placement.journey_id,
        "payment_reference": _payment_reference(placement),
        "customer_id": placement.customer_id,
        "contact": {name: placement.contact[name] for name in CONTACT_FIELDS if name in placement.contact},
        "amount": placement.amount,
        "currency": placement.currency,
        "original_due_date": (
            placement.original_due_date.astimezone(UTC).date().isoformat() if placement.original_due_date else None
        ),
        "first_failure_at": timestamp(placement.first_failure_at),
        "attempts": {
            "count": int(attempts.get("count", 0)),
            "last_decline_class": attempts.get("last_decline_class"),
            "last_attempt_at": timestamp(_parse(attempts.get("last_attempt_at"))),
        },
        "messages": {
            "sent_by_channel": {channel: int(sent.get(channel, 0)) for channel in CHANNELS},
            "last_sent_at": timestamp(_parse(messages.get("last_sent_at"))),
        },
        "disputed": placement.disputed,
        "policy_version": placement.policy_version,
        "placed_at": timestamp(placement.created_at),
    }


def recall_record(placement: PlacementRecord) -> dict[str, Any]:
    if placement.recalled_at is None:
        raise ExportFormatError(f"placement {placement.placement_id} is in a batch as a recall but has no recalled_at")
    return {
        "record_type": "recall",
        "placement_id": placement.placement_id,
        "journey_id": placement.journey_id,
        "payment_reference": _payment_reference(placement),
        "customer_id": placement.customer_id,
        "amount": placement.amount,
        "currency": placement.currency,
        "recalled_at": timestamp(placement.recalled_at),
        "reason": "paid",
        "source": placement.recall_source or "unknown",
    }


def _parse(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _placement_row(record: dict[str, Any]) -> list[Any]:
    contact, attempts, messages = record["contact"], record["attempts"], record["messages"]
    return [
        record["placement_id"],
        record["journey_id"],
        record["payment_reference"],
        record["customer_id"],
        *(contact.get(name) for name in CONTACT_FIELDS),
        record["amount"],
        record["currency"],
        record["original_due_date"],
        record["first_failure_at"],
        attempts["count"],
        attempts["last_decline_class"],
        attempts["last_attempt_at"],
        *(messages["sent_by_channel"][channel] for channel in CHANNELS),
        messages["last_sent_at"],
        record["disputed"],
        record["policy_version"],
        record["placed_at"],
    ]


def _recall_row(record: dict[str, Any]) -> list[Any]:
    return [record[column] for column in RECALL_COLUMNS]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _csv(columns: Iterable[str], rows: Iterable[list[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)  # RFC 4180
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue().encode("utf-8")


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records]
    return "".join(lines).encode("utf-8")


def _totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for record in records:
        totals[record["currency"]] = totals.get(record["currency"], 0) + record["amount"]
    return {"count": len(records), "amount_by_currency": dict(sorted(totals.items()))}


def _checked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for record in records:
        problems = validation_errors(record)
        if problems:
            raise ExportFormatError(
                f"{record.get('record_type')} {record.get('placement_id')} does not match the export schema: "
                + "; ".join(problems)
            )
    return records


def render_batch(
    export_id: str, business_date: date, placements: list[PlacementRecord], recalls: list[PlacementRecord]
) -> RenderedBatch:
    """The batch's files, in delivery order: data files, then the manifest (the partner's signal
    that the batch is complete)."""
    names = file_names(business_date)
    # Ordered here too, whatever order the caller passes: same members, same bytes.
    placements = sorted(placements, key=lambda p: (p.created_at, p.placement_id))
    recalls = sorted(recalls, key=lambda p: (p.recalled_at or p.created_at, p.placement_id))
    placed = _checked([placement_record(p) for p in placements])
    recalled = _checked([recall_record(p) for p in recalls])
    data = (
        ExportFile(names["placements_csv"], "text/csv", _csv(PLACEMENT_COLUMNS, map(_placement_row, placed)), len(placed)),
        ExportFile(names["placements_jsonl"], "application/x-ndjson", _jsonl(placed), len(placed)),
        ExportFile(names["recalls_csv"], "text/csv", _csv(RECALL_COLUMNS, map(_recall_row, recalled)), len(recalled)),
        ExportFile(names["recalls_jsonl"], "application/x-ndjson", _jsonl(recalled), len(recalled)),
    )
    manifest = {
        "format": "dunning-collections",
        "format_version": FORMAT_VERSION,
        "export_id": export_id,
        "business_date": business_date.isoformat(),
        "placements": _totals(placed),
        "recalls": _totals(recalled),
        "files": [f.describe() for f in data],
    }
    content = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return RenderedBatch(
        export_id=export_id,
        business_date=business_date,
        files=(*data, ExportFile(names["manifest"], "application/json", content, 0)),
        manifest=manifest,
    )
