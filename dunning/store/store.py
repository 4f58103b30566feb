"""Synchronous persistence used by activities (thread pool), the API and the CLI.

Every public method is one short transaction. On SQLite, writers start with BEGIN IMMEDIATE:
a deferred transaction that reads then writes can fail with SQLITE_BUSY when another process
commits in between (WAL snapshots cannot be upgraded), and the busy timeout does not help.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import (
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from dunning.budgets import CARD_HISTORY_WINDOW
from dunning.config import Settings, get_settings
from dunning.migrations import alembic_config
from dunning.store.records import (
    CARD_ATTEMPT_STATUSES,
    COLLECTION_STATUSES,
    MESSAGE_STATUSES,
    WEBHOOK_STATUSES,
    AuditRecord,
    CardAttemptRecord,
    ExportRecord,
    JourneyRecord,
    MessageRecord,
    PlacementRecord,
    PolicyActivationRecord,
    PolicyRecord,
    ReconciliationUpdate,
)
from dunning.store.schema import (
    AuditEntry,
    CardAttempt,
    ContactPreference,
    Export,
    Journey,
    Message,
    Placement,
    Policy,
    PolicyActivation,
    WebhookEvent,
)

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Arbitrary constant key for the advisory lock that serializes migrations on PostgreSQL.
_MIGRATION_LOCK_KEY = 0x64756E6E  # "dunn"
# alembic.context is a process-global proxy: two threads inside command.upgrade would swap
# each other's connections (and deadlock), whatever the database-level lock.
_ALEMBIC_LOCK = threading.Lock()
# Built once: the webhook ingest runs these on every event.
_WEBHOOK_STATUS = select(WebhookEvent.status).where(WebhookEvent.event_id == bindparam("event_id"))
_WEBHOOK_PAYLOAD = select(WebhookEvent.payload).where(WebhookEvent.event_id == bindparam("event_id"))


class RecordNotFound(LookupError):
    """An update addressed a row that does not exist (a caller bug, not a transient error)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _normalize_url(url: str) -> URL:
    parsed = make_url(url)
    # Plain postgres:// URLs (as many hosts hand out) would pick psycopg2, which is not a dep.
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Store:
    def __init__(self, url: str) -> None:
        self.url = _normalize_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            # Upserts and card locks are written for these two backends only.
            raise ValueError(f"unsupported database {self.dialect!r}: use SQLite or PostgreSQL")
        if self.dialect == "sqlite":
            self.engine = self._sqlite_engine(self.url)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        # Same pool; on SQLite this variant's transactions start with BEGIN IMMEDIATE.
        self._write_engine = self.engine.execution_options(dunning_sqlite_begin="IMMEDIATE")
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self._write_engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Store:
        return cls((settings or get_settings()).store_url)

    @staticmethod
    def _sqlite_engine(url: URL) -> Engine:
        database = url.database or ""
        in_memory = database in ("", ":memory:") or "mode=memory" in database
        if not in_memory and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **({"poolclass": StaticPool} if in_memory else {}),
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take BEGIN away from the sqlite3 module so that we control it (see "begin" below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                # busy_timeout first: switching to WAL itself needs a lock.
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("dunning_sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reads() as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._writes() as session, session.begin():
            yield session

    def _insert(self, table: Any) -> Any:
        """INSERT supporting ON CONFLICT on both backends."""
        dialect = postgresql if self.dialect == "postgresql" else sqlite
        return dialect.insert(table)

    # -- migrations -------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Migrate to head. Concurrent callers serialize on a lock and the later ones no-op."""
        with _ALEMBIC_LOCK, self._write_engine.begin() as conn:
            if self.dialect == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:key)")
                conn.execute(lock, {"key": _MIGRATION_LOCK_KEY})
            command.upgrade(alembic_config(connection=conn), "head")

    # -- policies ---------------------------------------------------------------------------

    def publish_policy(self, *, name: str, yaml_text: str, published_by: str) -> PolicyRecord:
        sha = hashlib.sha256(yaml_text.encode("utf-8")).hexdigest()
        version = f"{name}@{sha[:12]}"
        with self._write() as session:
            session.execute(
                self._insert(Policy)
                .values(
                    version=version,
                    name=name,
                    sha256=sha,
                    yaml_text=yaml_text,
                    published_by=published_by,
                    published_at=_now(),
                )
                .on_conflict_do_nothing(index_elements=[Policy.version])
            )
            row = session.get_one(Policy, version)
            if row.sha256 != sha:
                raise ValueError(f"policy version {version} already exists with different text")
            return PolicyRecord.model_validate(row)

    def get_policy(self, version: str) -> PolicyRecord | None:
        with self._read() as session:
            row = session.get(Policy, version)
            return PolicyRecord.model_validate(row) if row is not None else None

    def list_policies(self) -> list[PolicyRecord]:
        with self._read() as session:
            rows = session.scalars(
                select(Policy).order_by(Policy.published_at.desc(), Policy.version.desc())
            )
            return [PolicyRecord.model_validate(row) for row in rows]

    def activate_policy(self, version: str, *, activated_by: str, reason: str | None = None) -> PolicyActivationRecord:
        """Make a published version the one new journeys start on (open journeys keep theirs)."""
        with self._write() as session:
            if session.get(Policy, version) is None:
                raise RecordNotFound(f"policy version {version!r} is not published; publish it first")
            row = PolicyActivation(version=version, activated_at=_now(), activated_by=activated_by, reason=reason)
            session.add(row)
            session.flush()
            return PolicyActivationRecord.model_validate(row)

    def active_policy(self) -> PolicyRecord | None:
        with self._read() as session:
            row = session.scalars(
                select(Policy)
                .join(PolicyActivation, PolicyActivation.version == Policy.version)
                .order_by(PolicyActivation.activated_at.desc(), PolicyActivation.id.desc())
                .limit(1)
            ).first()
            return PolicyRecord.model_validate(row) if row is not None else None

    def policy_activations(self, version: str | None = None) -> list[PolicyActivationRecord]:
        """Oldest first; every activation is kept as the record of who switched what, when."""
        query = select(PolicyActivation).order_by(PolicyActivation.activated_at, PolicyActivation.id)
        if version is not None:
            query = query.where(PolicyActivation.version == version)
        with self._read() as session:
            return [PolicyActivationRecord.model_validate(row) for row in session.scalars(query)]

    # -- card ledger ------------------------------------------------------------------------

    def card_history(self, card_key: str, since: datetime) -> list[CardAttemptRecord]:
        with self._read() as session:
            return self._card_history(session, card_key, since)

    @staticmethod
    def _card_history(
        session: Session, card_key: str, since: datetime, *, exclude: tuple[str, int] | None = None
    ) -> list[CardAttemptRecord]:
        query = select(CardAttempt).where(CardAttempt.card_key == card_key, CardAttempt.at >= since)
        rows = session.scalars(query.order_by(CardAttempt.at, CardAttempt.id))
        return [
            CardAttemptRecord.model_validate(row)
            for row in rows
            if exclude is None or (row.journey_id, row.attempt_number) != exclude
        ]

    def reserve_card_attempt(
        self,
        reservation: CardAttemptRecord,
        check: Callable[[list[CardAttemptRecord]], bool],
    ) -> tuple[bool, list[CardAttemptRecord]]:
        """Atomically check the card's budget and reserve one attempt.

        `check` gets the card's attempts of the 31 days before `reservation.at` (the
        reservation's own clock, so simulated time works), excluding this attempt, and runs
        under the card's lock: keep it pure and fast. The same history is returned. A retry
        of an already reserved (journey_id, attempt_number) is granted without calling `check`.
        """
        key = (reservation.journey_id, reservation.attempt_number)
        since = reservation.at - CARD_HISTORY_WINDOW
        with self._write() as session:
            if self.dialect == "postgresql":
                session.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:card_key))"),
                    {"card_key": reservation.card_key},
                )
            existing = session.scalar(
                select(CardAttempt).where(
                    CardAttempt.journey_id == key[0], CardAttempt.attempt_number == key[1]
                )
            )
            if existing is not None:
                if existing.card_key != reservation.card_key:
                    raise ValueError(
                        f"attempt {key} is already reserved for card {existing.card_key!r}, "
                        f"not {reservation.card_key!r}"
                    )
                return True, self._card_history(session, reservation.card_key, since, exclude=key)
            history = self._card_history(session, reservation.card_key, since)
            if not check(history):
                return False, history
            # Status as given: "reserved" by default, or an outcome already known (e.g. the
            # initial decline that opened the journey).
            values = reservation.model_dump(exclude={"id"})
            # A different card's transaction may have taken this attempt meanwhile: still ours.
            session.execute(
                self._insert(CardAttempt)
                .values(**values)
                .on_conflict_do_nothing(
                    index_elements=[CardAttempt.journey_id, CardAttempt.attempt_number]
                )
            )
            return True, history

    def record_attempt_outcome(
        self,
        journey_id: str,
        attempt_number: int,
        *,
        status: str,
        decline_code: str | None = None,
        network_decline_code: str | None = None,
        advice_code: str | None = None,
        network_advice_code: str | None = None,
        decline_class: str | None = None,
        charge_id: str | None = None,
    ) -> None:
        if status not in CARD_ATTEMPT_STATUSES:
            raise ValueError(f"unknown card attempt status {status!r}")
        with self._write() as session:
            result = session.execute(
                update(CardAttempt)
                .where(
                    CardAttempt.journey_id == journey_id,
                    CardAttempt.attempt_number == attempt_number,
                )
                .values(
                    status=status,
                    decline_code=decline_code,
                    network_decline_code=network_decline_code,
                    advice_code=advice_code,
                    network_advice_code=network_advice_code,
                    decline_class=decline_class,
                    charge_id=charge_id,
                )
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise RecordNotFound(f"no card attempt {journey_id}#{attempt_number}")

    def attempts_for_journey(self, journey_id: str) -> list[CardAttemptRecord]:
        with self._read() as session:
            rows = session.scalars(
                select(CardAttempt)
                .where(CardAttempt.journey_id == journey_id)
                .order_by(CardAttempt.attempt_number)
            )
            return [CardAttemptRecord.model_validate(row) for row in rows]

    # -- messages ---------------------------------------------------------------------------

    def claim_message(self, record: MessageRecord) -> MessageRecord:
        """Insert the message as `claimed` unless its dedupe key exists; return the stored row.

        The caller sends only if the returned row is the one it claimed (or is still claimed
        after a crash): a `sent` row means another attempt already delivered it.
        """
        values = record.model_dump(exclude={"id"})
        values["status"] = "claimed"
        values["created_at"] = record.created_at or _now()
        with self._write() as session:
            session.execute(
                self._insert(Message)
                .values(**values)
                .on_conflict_do_nothing(index_elements=[Message.dedupe_key])
            )
            row = session.scalars(
                select(Message).where(Message.dedupe_key == record.dedupe_key)
            ).one()
            return MessageRecord.model_validate(row)

    def mark_message(
        self,
        dedupe_key: str,
        *,
        status: str,
        provider: str | None = None,
        provider_message_id: str | None = None,
        error: str | None = None,
        sent_at: datetime | None = None,
    ) -> None:
        """Set the delivery status. `error` always follows the new status (None clears it);
        provider fields are kept unless given; `sent` stamps sent_at when not given."""
        if status not in MESSAGE_STATUSES:
            raise ValueError(f"unknown message status {status!r}")
        values: dict[str, Any] = {"status": status, "error": error}
        if provider is not None:
            values["provider"] = provider
        if provider_message_id is not None:
            values["provider_message_id"] = provider_message_id
        if sent_at is None and status == "sent":
            sent_at = _now()
        if sent_at is not None:
            values["sent_at"] = sent_at
        with self._write() as session:
            result = session.execute(
                update(Message).where(Message.dedupe_key == dedupe_key).values(**values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise RecordNotFound(f"no message {dedupe_key!r}")

    def mark_sent_once(self, dedupe_key: str, *, provider: str, provider_message_id: str) -> bool:
        """claimed -> sent in one statement; True only for the caller that made the transition.

        For a delivery that IS this write (the outbox), this makes the send exactly once even
        when a later write fails and the activity is retried.
        """
        with self._write() as session:
            result = session.execute(
                update(Message)
                .where(Message.dedupe_key == dedupe_key, Message.status == "claimed")
                .values(status="sent", provider=provider, provider_message_id=provider_message_id, sent_at=_now(), error=None)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def messages_for_customer(self, customer_id: str, since: datetime) -> list[MessageRecord]:
        with self._read() as session:
            rows = session.scalars(
                select(Message)
                .where(Message.customer_id == customer_id, Message.created_at >= since)
                .order_by(Message.created_at, Message.id)
            )
            return [MessageRecord.model_validate(row) for row in rows]

    def messages_for_journey(self, journey_id: str) -> list[MessageRecord]:
        with self._read() as session:
            rows = session.scalars(
                select(Message)
                .where(Message.journey_id == journey_id)
                .order_by(Message.created_at, Message.id)
            )
            return [MessageRecord.model_validate(row) for row in rows]

    # -- contact preferences ----------------------------------------------------------------

    def set_opt_out(self, customer_id: str, channel: str, opted_out: bool, source: str) -> None:
        stmt = self._insert(ContactPreference).values(
            customer_id=customer_id,
            channel=channel,
            opted_out=opted_out,
            source=source,
            updated_at=_now(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[ContactPreference.customer_id, ContactPreference.channel],
            set_={
                "opted_out": stmt.excluded.opted_out,
                "source": stmt.excluded.source,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        with self._write() as session:
            session.execute(stmt)

    def opted_out_channels(self, customer_id: str) -> set[str]:
        with self._read() as session:
            return set(
                session.scalars(
                    select(ContactPreference.channel).where(
                        ContactPreference.customer_id == customer_id,
                        ContactPreference.opted_out.is_(True),
                    )
                )
            )

    # -- webhook inbox ----------------------------------------------------------------------

    def record_webhook_event(
        self, *, event_id: str, source: str, type: str, payload: dict[str, Any]
    ) -> bool:
        """True when the event is new, False for a duplicate delivery (never raises for one)."""
        # Core, not the ORM session: this and the mark below run for every webhook delivery.
        with self._write_engine.begin() as conn:
            result = conn.execute(
                self._insert(WebhookEvent)
                .values(
                    event_id=event_id,
                    source=source,
                    type=type,
                    received_at=_now(),
                    payload=payload,
                    status="received",
                )
                .on_conflict_do_nothing(index_elements=[WebhookEvent.event_id])
                .returning(WebhookEvent.id)
            )
            # RETURNING yields a row only when this statement inserted it.
            return result.scalar_one_or_none() is not None

    def mark_webhook_event(self, event_id: str, status: str, error: str | None = None) -> None:
        if status not in WEBHOOK_STATUSES:
            raise ValueError(f"unknown webhook event status {status!r}")
        with self._write_engine.begin() as conn:
            result = conn.execute(
                update(WebhookEvent)
                .where(WebhookEvent.event_id == event_id)
                .values(status=status, error=error)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise RecordNotFound(f"no webhook event {event_id!r}")

    def webhook_event_status(self, event_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.scalar(_WEBHOOK_STATUS, {"event_id": event_id})

    def webhook_event_payload(self, event_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return conn.scalar(_WEBHOOK_PAYLOAD, {"event_id": event_id})

    def stale_webhook_events(
        self, *, source: str, received_before: datetime, failed_since: datetime
    ) -> list[tuple[str, dict[str, Any]]]:
        """(event id, payload) of `source`'s events received before `received_before` that are
        still `received`, or `failed` and received after `failed_since`; the oldest 500."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(WebhookEvent.event_id, WebhookEvent.payload)
                .where(
                    WebhookEvent.source == source,
                    WebhookEvent.received_at < received_before,
                    (WebhookEvent.status == "received")
                    | ((WebhookEvent.status == "failed") & (WebhookEvent.received_at > failed_since)),
                )
                .order_by(WebhookEvent.id)
                .limit(500)
            )
            return [(event_id, payload) for event_id, payload in rows]

    def webhook_event_counts(self) -> dict[str, int]:
        """Count per status; every status is present (0 when none) so gauges stay stable."""
        with self._read() as session:
            rows = session.execute(
                select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status)
            )
            counts = dict.fromkeys(WEBHOOK_STATUSES, 0)
            counts.update({status: count for status, count in rows})
            return counts

    # -- journeys projection ----------------------------------------------------------------

    def upsert_journey(self, row: JourneyRecord) -> None:
        """Insert or replace the projection row, ignoring writes older than the stored one
        (activity retries can deliver an earlier snapshot after a later one)."""
        values = row.model_dump(mode="python")
        values["stage"] = row.stage.value
        stmt = self._insert(Journey).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[Journey.journey_id],
            set_={name: stmt.excluded[name] for name in values if name != "journey_id"},
            where=Journey.updated_at <= stmt.excluded.updated_at,
        )
        with self._write() as session:
            session.execute(stmt)

    def get_journey(self, journey_id: str) -> JourneyRecord | None:
        with self._read() as session:
            row = session.get(Journey, journey_id)
            return JourneyRecord.model_validate(row) if row is not None else None

    def list_journeys(
        self,
        *,
        stage: str | None = None,
        customer_id: str | None = None,
        since: datetime | None = None,
        limit: int = 500,
    ) -> list[JourneyRecord]:
        """Most recently updated first; `since` filters on updated_at."""
        query = select(Journey)
        if stage is not None:
            query = query.where(Journey.stage == stage)
        if customer_id is not None:
            query = query.where(Journey.customer_id == customer_id)
        if since is not None:
            query = query.where(Journey.updated_at >= since)
        query = query.order_by(Journey.updated_at.desc(), Journey.journey_id).limit(limit)
        with self._read() as session:
            return [JourneyRecord.model_validate(row) for row in session.scalars(query)]

    # -- audit ------------------------------------------------------------------------------

    def audit(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        with self._write() as session:
            session.add(
                AuditEntry(
                    at=_now(),
                    actor=actor,
                    action=action,
                    target=target,
                    reason=reason,
                    details=details,
                )
            )

    def audit_entries(self, target: str | None = None) -> list[AuditRecord]:
        """Oldest first."""
        query = select(AuditEntry)
        if target is not None:
            query = query.where(AuditEntry.target == target)
        with self._read() as session:
            rows = session.scalars(query.order_by(AuditEntry.at, AuditEntry.id))
            return [AuditRecord.model_validate(row) for row in rows]

    # -- collections: placements, export batches, recalls, reconciliation ----------------------

    def create_placement(self, record: PlacementRecord) -> tuple[PlacementRecord, bool]:
        """Insert unless the journey is already placed (journey_id is unique): the stored row and
        whether this call created it. A retry never changes a placement."""
        values = record.model_dump(mode="python")
        with self._write() as session:
            result = session.execute(
                self._insert(Placement)
                .values(**values)
                .on_conflict_do_nothing(index_elements=[Placement.journey_id])
                .returning(Placement.placement_id)
            )
            created = result.scalar_one_or_none() is not None
            row = session.scalars(select(Placement).where(Placement.journey_id == record.journey_id)).one()
            return PlacementRecord.model_validate(row), created

    def get_placement(self, placement_id: str) -> PlacementRecord | None:
        with self._read() as session:
            row = session.get(Placement, placement_id)
            return PlacementRecord.model_validate(row) if row is not None else None

    def placement_for_journey(self, journey_id: str) -> PlacementRecord | None:
        with self._read() as session:
            row = session.scalars(select(Placement).where(Placement.journey_id == journey_id)).first()
            return PlacementRecord.model_validate(row) if row is not None else None

    def list_placements(self, *, customer_id: str | None = None, limit: int = 1000) -> list[PlacementRecord]:
        """Newest first."""
        query = select(Placement)
        if customer_id is not None:
            query = query.where(Placement.customer_id == customer_id)
        query = query.order_by(Placement.created_at.desc(), Placement.placement_id).limit(limit)
        with self._read() as session:
            return [PlacementRecord.model_validate(row) for row in session.scalars(query)]

    def claim_export(
        self, *, export_id: str, business_date: date, at: datetime
    ) -> tuple[ExportRecord, list[PlacementRecord], list[PlacementRecord]]:
        """The batch of a business date: (export, placements, recalls).

        The first call fixes its membership in one transaction: every placement in no batch yet
        and every recall of a placement already sent. Later calls (retries, re-runs) return the
        same members, so a placement is in exactly one batch. A placement paid before its first
        export is withdrawn: it is never sent, and neither is its recall.
        """
        with self._write() as session:
            inserted = session.execute(
                self._insert(Export)
                .values(export_id=export_id, business_date=business_date, created_at=at, files=[], manifest={})
                # Any unique conflict: a concurrent first build of the date may trip the export id's
                # primary key before the business date's index (PostgreSQL checks them in turn).
                .on_conflict_do_nothing()
                .returning(Export.export_id)
            ).scalar_one_or_none()
            if inserted is not None:
                session.execute(
                    update(Placement)
                    .where(
                        Placement.export_id.is_not(None),
                        Placement.recalled_at.is_not(None),
                        Placement.recall_export_id.is_(None),
                    )
                    .values(recall_export_id=inserted)
                )
                session.execute(
                    update(Placement)
                    .where(Placement.export_id.is_(None), Placement.recalled_at.is_(None))
                    .values(export_id=inserted)
                )
            row = session.scalars(select(Export).where(Export.business_date == business_date)).one()
            return (ExportRecord.model_validate(row), *self._batch_members(session, row.export_id))

    def export_batch(
        self, export_id: str
    ) -> tuple[ExportRecord, list[PlacementRecord], list[PlacementRecord]] | None:
        with self._read() as session:
            row = session.get(Export, export_id)
            if row is None:
                return None
            return (ExportRecord.model_validate(row), *self._batch_members(session, export_id))

    @staticmethod
    def _batch_members(session: Session, export_id: str) -> tuple[list[PlacementRecord], list[PlacementRecord]]:
        placements = session.scalars(
            select(Placement)
            .where(Placement.export_id == export_id)
            .order_by(Placement.created_at, Placement.placement_id)
        )
        recalls = session.scalars(
            select(Placement)
            .where(Placement.recall_export_id == export_id)
            .order_by(Placement.recalled_at, Placement.placement_id)
        )
        return (
            [PlacementRecord.model_validate(row) for row in placements],
            [PlacementRecord.model_validate(row) for row in recalls],
        )

    def get_export(self, export_id: str) -> ExportRecord | None:
        with self._read() as session:
            row = session.get(Export, export_id)
            return ExportRecord.model_validate(row) if row is not None else None

    def list_exports(self, limit: int = 100) -> list[ExportRecord]:
        """Newest business date first."""
        with self._read() as session:
            rows = session.scalars(select(Export).order_by(Export.business_date.desc()).limit(limit))
            return [ExportRecord.model_validate(row) for row in rows]

    def record_export_files(
        self, export_id: str, files: list[dict[str, Any]], manifest: dict[str, Any]
    ) -> ExportRecord:
        """Keep the first rendering's file list and manifest; a different later one is refused
        (re-runs must deliver identical bytes)."""
        with self._write() as session:
            row = session.get(Export, export_id)
            if row is None:
                raise RecordNotFound(f"no export {export_id!r}")
            if not row.files:
                row.files, row.manifest = files, manifest
            elif row.files != files or row.manifest != manifest:
                raise ValueError(
                    f"export {export_id} renders differently than when it was first built "
                    f"(stored files {row.files}, now {files})"
                )
            session.flush()
            return ExportRecord.model_validate(row)

    def mark_export_delivered(self, export_id: str, *, destination: str, at: datetime) -> ExportRecord:
        """The latest successful delivery (a re-run re-delivers the same bytes)."""
        with self._write() as session:
            row = session.get(Export, export_id)
            if row is None:
                raise RecordNotFound(f"no export {export_id!r}")
            row.delivered_at, row.destination = at, destination
            session.flush()
            return ExportRecord.model_validate(row)

    def mark_recalled(
        self, journey_id: str, *, at: datetime, source: str, timeline_entry: dict[str, Any]
    ) -> tuple[PlacementRecord | None, bool]:
        """Record that a placed journey was paid: (placement, newly recalled). The first recall
        wins; it is noted on the journey's projection timeline in the same transaction."""
        with self._write() as session:
            row = session.scalars(select(Placement).where(Placement.journey_id == journey_id)).first()
            if row is None:
                return None, False
            if row.recalled_at is not None:
                return PlacementRecord.model_validate(row), False
            row.recalled_at, row.recall_source = at, source
            journey = session.get(Journey, journey_id)
            if journey is not None:
                journey.timeline = [*journey.timeline, timeline_entry]  # a new list: JSON is not mutation-tracked
                journey.updated_at = max(journey.updated_at, at)  # older projections must not overwrite it
            session.flush()
            return PlacementRecord.model_validate(row), True

    def apply_reconciliation(
        self,
        updates: list[ReconciliationUpdate],
        *,
        at: datetime,
        check: Callable[[dict[str, PlacementRecord]], None],
    ) -> int:
        """Apply partner-reported outcomes all or nothing. `check` sees the addressed placements
        (by id) under the write lock and raises to refuse the whole file."""
        ids = sorted({u.placement_id for u in updates})
        with self._write() as session:
            found: dict[str, PlacementRecord] = {}
            for start in range(0, len(ids), 500):  # stay under bound-parameter limits
                chunk = ids[start : start + 500]
                for row in session.scalars(select(Placement).where(Placement.placement_id.in_(chunk))):
                    found[row.placement_id] = PlacementRecord.model_validate(row)
            check(found)
            for item in updates:
                session.execute(
                    update(Placement)
                    .where(Placement.placement_id == item.placement_id)
                    .values(
                        collection_status=item.status,
                        collected_amount=item.collected_amount,
                        collected_on=item.collected_on,
                        reconciled_at=at,
                    )
                )
            return len(updates)

    def collections_summary(self) -> list[dict[str, Any]]:
        """Per currency: placed, recalled and partner-collected amounts and outcome counts."""
        recalled = Placement.recalled_at.is_not(None)
        with self._read() as session:
            totals = session.execute(
                select(
                    Placement.currency,
                    func.count(),
                    func.coalesce(func.sum(Placement.amount), 0),
                    func.count(Placement.recalled_at),
                    func.coalesce(func.sum(Placement.amount).filter(recalled), 0),
                    func.coalesce(func.sum(Placement.collected_amount), 0),
                )
                .group_by(Placement.currency)
                .order_by(Placement.currency)
            ).all()
            statuses = session.execute(
                select(Placement.currency, Placement.collection_status, func.count())
                .where(Placement.collection_status.is_not(None))
                .group_by(Placement.currency, Placement.collection_status)
            ).all()
        by_status: dict[str, dict[str, int]] = {}
        for currency, status, count in statuses:
            by_status.setdefault(currency, {})[status] = count
        return [
            {
                "currency": currency,
                "placements": count,
                "placed_amount": int(placed),
                "recalled": recalled_count,
                "recalled_amount": int(recalled_amount),
                "collected_amount": int(collected),
                "statuses": {s: by_status.get(currency, {}).get(s, 0) for s in COLLECTION_STATUSES},
            }
            for currency, count, placed, recalled_count, recalled_amount, collected in totals
        ]
