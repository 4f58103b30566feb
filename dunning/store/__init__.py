"""Persistence: the SQL store behind activities, the API and the CLI."""

from dunning.store.records import (
    AuditRecord,
    CardAttemptRecord,
    JourneyRecord,
    MessageRecord,
    PolicyActivationRecord,
    PolicyRecord,
    message_dedupe_key,
)
from dunning.store.store import RecordNotFound, Store

__all__ = [
    "AuditRecord",
    "CardAttemptRecord",
    "JourneyRecord",
    "MessageRecord",
    "PolicyActivationRecord",
    "PolicyRecord",
    "RecordNotFound",
    "Store",
    "message_dedupe_key",
]
