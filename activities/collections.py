"""Collections activities: store a placement at hand-off; build and deliver the partner's export.

Delivery transports live one per external system: file_delivery, sftp_delivery, https_delivery.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning.collections.config import CollectionsConfig, CollectionsConfigError
from dunning.collections.delivery import DeliveryRefused, Destination
from dunning.collections.export import (
    EXPORT_REFUSED,
    BuildExport,
    ExportBatch,
    ExportedFile,
    ExportResult,
    business_date_for,
)
from dunning.collections.format import ExportFormatError, RenderedBatch, export_id_for, render_batch
from dunning.collections.placement import PlacementRequest, PlacementResult, placement_id_for
from dunning.store import Store
from dunning.store.records import PlacementRecord

def refused(message: str) -> ApplicationError:
    """A failure no retry fixes (bad data, bad credentials): Temporal must not retry it."""
    return ApplicationError(message, type=EXPORT_REFUSED, non_retryable=True)


def build_destination(config: CollectionsConfig) -> Destination:
    """The transport for DUNNING_EXPORT_URL; raises CollectionsConfigError naming the fix."""
    url = config.export_url
    parts = urlsplit(url)
    try:
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"file:// URLs name a local directory (file:///path), not host {parts.netloc!r}")
            from activities.file_delivery import FileDestination

            return FileDestination(Path(unquote(parts.path)))
        if parts.scheme == "sftp":
            from activities.sftp_delivery import SftpDestination

            if not parts.hostname or not parts.username:
                raise ValueError("sftp:// needs a user and a host: sftp://user:password@host:port/dir")
            return SftpDestination(
                host=parts.hostname,
                port=parts.port or 22,
                username=unquote(parts.username),
                password=unquote(parts.password) if parts.password is not None else None,
                directory=unquote(parts.path) or ".",
                key_file=config.ssh_key_file,
                known_hosts=config.known_hosts,
            )
        if parts.scheme in ("https", "http"):
            from activities.https_delivery import HttpsDestination

            return HttpsDestination(url, secret=config.export_secret, ca_file=config.ca_file)
    except ValueError as exc:
        raise CollectionsConfigError(f"DUNNING_EXPORT_URL: {exc}") from exc
    raise CollectionsConfigError(
        f"DUNNING_EXPORT_URL: scheme {parts.scheme or '(none)'!r} is not supported; use sftp://, https:// or file:///"
    )


class CollectionsActivities:
    def __init__(self, store: Store, config: CollectionsConfig, destination: Destination | None = None) -> None:
        self.store = store
        self.config = config
        # Built now so a bad DUNNING_EXPORT_URL stops the worker at start, with its fix.
        self.destination = destination or build_destination(config)

    @activity.defn(name="collections.place")
    def place(self, request: PlacementRequest) -> PlacementResult:
        customer = request.customer.model_dump()
        record = PlacementRecord(
            placement_id=placement_id_for(request.journey_id),
            journey_id=request.journey_id,
            payment_reference=request.payment_reference,
            customer_id=request.customer.id,
            contact={name: customer.get(name) for name in self.config.partner_fields},
            amount=request.amount,
            currency=request.currency,
            original_due_date=request.original_due_date,
            first_failure_at=request.first_failure_at,
            attempts_summary=request.attempts.model_dump(mode="json"),
            messages_summary=request.messages.model_dump(mode="json"),
            disputed=request.disputed,
            policy_version=request.policy_version,
            created_at=request.placed_at,
        )
        stored, created = self.store.create_placement(record)
        if created:
            activity.logger.info("placed %s with the collection partner as %s", request.journey_id, stored.placement_id)
        return PlacementResult(placement_id=stored.placement_id, created=created)

    @activity.defn(name="collections.build_export")
    def build_export(self, request: BuildExport) -> ExportBatch:
        """Fix the batch of the business date (first build) and record its files' digests."""
        business_date = request.business_date or business_date_for(request.at, self.config.merchant_timezone)
        export, placements, recalls = self.store.claim_export(
            export_id=export_id_for(business_date), business_date=business_date, at=datetime.now(UTC)
        )
        rendered = self._render(export.export_id, export.business_date, placements, recalls)
        files = [f.describe() for f in rendered.files]
        try:
            self.store.record_export_files(export.export_id, files, rendered.manifest)
        except ValueError as exc:
            raise refused(str(exc)) from exc
        return ExportBatch(
            export_id=export.export_id,
            business_date=export.business_date,
            placements=len(placements),
            recalls=len(recalls),
            files=tuple(ExportedFile(**f) for f in files),
        )

    @activity.defn(name="collections.deliver_export")
    def deliver_export(self, export_id: str) -> ExportResult:
        """Render the batch again from the store (identical bytes, checked against the digests
        recorded at build) and deliver it; safe to retry at any point."""
        found = self.store.export_batch(export_id)
        if found is None:
            raise refused(f"no export {export_id!r}: build it first")
        export, placements, recalls = found
        rendered = self._render(export_id, export.business_date, placements, recalls)
        files = [f.describe() for f in rendered.files]
        if files != export.files:
            raise refused(f"export {export_id} no longer renders the bytes recorded when it was built; not delivering")
        try:
            self.destination.deliver(rendered, progress=lambda name: activity.heartbeat(name))
        except DeliveryRefused as exc:
            raise refused(str(exc)) from exc
        destination = self.destination.describe()
        delivered = self.store.mark_export_delivered(export_id, destination=destination, at=datetime.now(UTC))
        assert delivered.delivered_at is not None
        return ExportResult(
            export_id=export_id,
            business_date=export.business_date,
            placements=len(placements),
            recalls=len(recalls),
            files=tuple(ExportedFile(**f) for f in files),
            destination=destination,
            delivered_at=delivered.delivered_at,
        )

    @staticmethod
    def _render(export_id, business_date, placements, recalls) -> RenderedBatch:
        try:
            return render_batch(export_id, business_date, placements, recalls)
        except ExportFormatError as exc:
            raise refused(str(exc)) from exc
