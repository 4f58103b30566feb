"""CollectionsExportWorkflow: one business date's batch for the collection partner.

Started daily by the `collections-export` Schedule (02:00 in the merchant's zone) or by
`dunning collections export [--date D]` as `collections-export-<date>`. Building fixes the batch
in the store; delivering re-renders the same bytes, so retries and re-runs never duplicate.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from dunning.collections.export import EXPORT_REFUSED, BuildExport, ExportBatch, ExportInput, ExportResult

STORE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[EXPORT_REFUSED],
)
# A partner outage delays the batch; give up before the next day's run so ops see the failure.
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=10),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=30),
    non_retryable_error_types=[EXPORT_REFUSED],
)
DELIVERY_DEADLINE = timedelta(hours=20)
# Set by the server on runs a Schedule starts: the date is the scheduled one, even when caught up late.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@workflow.defn(name="CollectionsExportWorkflow")
class CollectionsExportWorkflow:
    @workflow.run
    async def run(self, request: ExportInput | None = None) -> ExportResult:
        request = request or ExportInput()
        batch = await workflow.execute_activity(
            "collections.build_export",
            BuildExport(business_date=request.business_date, at=_scheduled_time() or workflow.now()),
            result_type=ExportBatch,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=STORE_RETRY,
        )
        return await workflow.execute_activity(
            "collections.deliver_export",
            batch.export_id,
            result_type=ExportResult,
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(minutes=5),
            schedule_to_close_timeout=DELIVERY_DEADLINE,
            retry_policy=DELIVERY_RETRY,
        )


def _scheduled_time() -> datetime | None:
    return workflow.info().typed_search_attributes.get(SCHEDULED_START)
