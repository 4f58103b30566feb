"""JSON Schema of the records in the export's JSON Lines files (docs/collections-placement.schema.json
is a copy that a test keeps identical). The exporter validates every record before it ships."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from dunning.collections.config import CONTACT_FIELDS

FORMAT_VERSION = 1

_TIMESTAMP = {"type": "string", "format": "date-time", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"}
_DATE = {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
_CURRENCY = {"type": "string", "pattern": "^[a-z]{3}$", "description": "ISO 4217, lower case"}
_AMOUNT = {"type": "integer", "minimum": 1, "description": "minor units (cents)"}
_COUNT = {"type": "integer", "minimum": 0}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


RECORD_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:dunning:collections:record:v1",
    "title": "Collections export record (one line of placements-*.jsonl or recalls-*.jsonl)",
    "oneOf": [{"$ref": "#/$defs/placement"}, {"$ref": "#/$defs/recall"}],
    "$defs": {
        "placement": {
            "type": "object",
            "description": "A debt handed to the collection partner.",
            "additionalProperties": False,
            "required": [
                "record_type", "placement_id", "journey_id", "payment_reference", "customer_id", "contact",
                "amount", "currency", "original_due_date", "first_failure_at", "attempts", "messages",
                "disputed", "policy_version", "placed_at",
            ],
            "properties": {
                "record_type": {"const": "placement"},
                "placement_id": {"type": "string", "pattern": "^plc_[0-9a-f]{20}$"},
                "journey_id": {"type": "string", "minLength": 1},
                "payment_reference": {"type": "string", "minLength": 1, "description": "Stripe invoice (in_…) or PaymentIntent (pi_…) id"},
                "customer_id": {"type": "string", "minLength": 1},
                "contact": {
                    "type": "object",
                    "description": "Only the fields the partner agreement allows (DUNNING_PARTNER_FIELDS); null when unknown.",
                    "additionalProperties": False,
                    "properties": {name: _nullable({"type": "string"}) for name in CONTACT_FIELDS},
                },
                "amount": _AMOUNT,
                "currency": _CURRENCY,
                "original_due_date": _nullable(_DATE),
                "first_failure_at": _TIMESTAMP,
                "attempts": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["count", "last_decline_class", "last_attempt_at"],
                    "properties": {
                        "count": _COUNT,
                        "last_decline_class": _nullable({"type": "string"}),
                        "last_attempt_at": _nullable(_TIMESTAMP),
                    },
                },
                "messages": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sent_by_channel", "last_sent_at"],
                    "properties": {
                        "sent_by_channel": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["email", "sms", "in_app"],
                            "properties": {"email": _COUNT, "sms": _COUNT, "in_app": _COUNT},
                        },
                        "last_sent_at": _nullable(_TIMESTAMP),
                    },
                },
                "disputed": {"type": "boolean"},
                "policy_version": _nullable({"type": "string"}),
                "placed_at": _TIMESTAMP,
            },
        },
        "recall": {
            "type": "object",
            "description": "A placement the customer paid: stop collecting it.",
            "additionalProperties": False,
            "required": [
                "record_type", "placement_id", "journey_id", "payment_reference", "customer_id",
                "amount", "currency", "recalled_at", "reason", "source",
            ],
            "properties": {
                "record_type": {"const": "recall"},
                "placement_id": {"type": "string", "pattern": "^plc_[0-9a-f]{20}$"},
                "journey_id": {"type": "string", "minLength": 1},
                "payment_reference": {"type": "string", "minLength": 1},
                "customer_id": {"type": "string", "minLength": 1},
                "amount": _AMOUNT,
                "currency": _CURRENCY,
                "recalled_at": _TIMESTAMP,
                "reason": {"enum": ["paid"]},
                "source": {"type": "string", "minLength": 1, "description": "e.g. invoice.paid, ops"},
            },
        },
    },
}


def schema_text() -> str:
    """The schema as docs/collections-placement.schema.json holds it."""
    return json.dumps(RECORD_SCHEMA, indent=2, ensure_ascii=False) + "\n"


@lru_cache(maxsize=None)
def _validator(record_type: str) -> Any:
    from jsonschema import Draft202012Validator, FormatChecker

    Draft202012Validator.check_schema(RECORD_SCHEMA)
    return Draft202012Validator(RECORD_SCHEMA["$defs"][record_type], format_checker=FormatChecker())


def validation_errors(record: dict[str, Any]) -> list[str]:
    """Empty when the record matches the schema; else one line per problem (path: message)."""
    kind = record.get("record_type")
    if kind not in RECORD_SCHEMA["$defs"]:
        return [f"record_type: {kind!r} is not one of {sorted(RECORD_SCHEMA['$defs'])}"]
    errors = sorted(_validator(kind).iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(record)'}: {e.message}" for e in errors]
