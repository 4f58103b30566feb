"""The export workflow's contract: its input, the batch its build activity fixes, its result."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from pydantic import Field

from dunning.models import Frozen

WORKFLOW_NAME = "CollectionsExportWorkflow"
SCHEDULE_ID = "collections-export"
EXPORT_REFUSED = "ExportRefused"  # the error type of failures no retry fixes (bad data, credentials)


def export_workflow_id(business_date: date) -> str:
    return f"collections-export-{business_date.isoformat()}"


def business_date_for(at: datetime, timezone: str) -> date:
    """The merchant's calendar date at `at`: the schedule's 02:00 run exports that day's batch."""
    return at.astimezone(ZoneInfo(timezone)).date()


class ExportInput(Frozen):
    business_date: date | None = Field(default=None, description="unset: the date of the run in the merchant's zone")


class BuildExport(Frozen):
    business_date: date | None = None
    at: datetime = Field(description="the scheduled (or workflow) time the date is derived from")


class ExportedFile(Frozen):
    name: str
    media_type: str
    records: int
    bytes: int
    sha256: str


class ExportBatch(Frozen):
    export_id: str
    business_date: date
    placements: int
    recalls: int
    files: tuple[ExportedFile, ...]


class ExportResult(ExportBatch):
    """The batch as delivered (same fields, same order, then where and when)."""

    destination: str = Field(description="where it went, without credentials")
    delivered_at: datetime
