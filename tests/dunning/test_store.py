"""Store tests, run against both SQLite and PostgreSQL (PostgreSQL is required, never skipped)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import ValidationError
from sqlalchemy import inspect, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from dunning.config import Settings
from dunning.enums import Stage
from dunning.migrations import alembic_config
from dunning.store import (
    CardAttemptRecord,
    JourneyRecord,
    MessageRecord,
    RecordNotFound,
    Store,
    message_dedupe_key,
)
from dunning.store.schema import Base, Export, Placement, WebhookEvent

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def attempt(
    journey_id: str = "dunning-in_1",
    number: int = 1,
    *,
    card_key: str = "fp_card",
    at: datetime = T0,
) -> CardAttemptRecord:
    return CardAttemptRecord(
        journey_id=journey_id,
        attempt_number=number,
        card_key=card_key,
        brand="visa",
        payment_method_id="pm_1",
        amount=4900,
        currency="usd",
        at=at,
        idempotency_key=f"{journey_id}:{number}",
    )


def message(
    step_id: str = "reminder-1", *, channel: str = "email", **overrides: Any
) -> MessageRecord:
    fields: dict[str, Any] = {
        "journey_id": "dunning-in_1",
        "customer_id": "cus_1",
        "channel": channel,
        "step_id": step_id,
        "template": "payment_failed",
        "locale": "en",
        "recipient": "ada@example.com",
        "subject": "Your payment failed",
        "body_text": "Please update your card.",
        "body_html": "<p>Please update your card.</p>",
    }
    return MessageRecord(**(fields | overrides))


def journey(journey_id: str = "dunning-in_1", **overrides: Any) -> JourneyRecord:
    fields: dict[str, Any] = {
        "journey_id": journey_id,
        "payment_reference": journey_id.removeprefix("dunning-"),
        "payment_kind": "invoice",
        "customer_id": "cus_1",
        "stage": Stage.retrying,
        "amount": 4900,
        "currency": "usd",
        "decline_class": "soft",
        "policy_version": "default@3f2a9c1b0d4e",
        "segment": "smb",
        "variant": "A",
        "started_at": T0,
        "updated_at": T0,
        "next_action": "retry",
        "next_action_at": T0 + timedelta(days=3),
        "timeline": [{"at": T0.isoformat(), "event": "started"}],
    }
    return JourneyRecord(**(fields | overrides))


def in_threads(count: int, fn: Callable[[int], Any], timeout: float = 120) -> list[Any]:
    """Run fn(i) in `count` threads released together; a deadlock fails instead of hanging
    (the PostgreSQL fixture's DROP DATABASE ... WITH (FORCE) then frees stuck threads)."""
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    pool = ThreadPoolExecutor(max_workers=count)
    futures = [pool.submit(run, i) for i in range(count)]
    try:
        return [future.result(timeout=timeout) for future in futures]
    except FuturesTimeout:
        pytest.fail(f"threads still running after {timeout}s: deadlock?", pytrace=False)
    finally:
        pool.shutdown(wait=False)


# -- engine and migrations -----------------------------------------------------------------


def test_sqlite_connection_pragmas_and_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "dunning.db"
    store = Store(f"sqlite:///{path}")
    try:
        with store.engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
            }
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 1,  # NORMAL
            "busy_timeout": 10000,
            "foreign_keys": 1,
        }
        assert path.exists()
    finally:
        store.dispose()


def test_from_settings(tmp_path: Path) -> None:
    store = Store.from_settings(Settings(dunning_data_dir=tmp_path / "data"))
    try:
        store.upgrade()
        assert store.dialect == "sqlite"
        assert (tmp_path / "data" / "dunning.db").exists()
    finally:
        store.dispose()
    other = Store.from_settings(Settings(database_url=f"sqlite:///{tmp_path / 'other.db'}"))
    assert other.url.database == str(tmp_path / "other.db")
    other.dispose()


def test_plain_postgres_urls_use_psycopg() -> None:
    store = Store("postgres://u:p@db.example:5432/dunning")
    assert store.url.drivername == "postgresql+psycopg"
    assert store.dialect == "postgresql"
    store.dispose()
    with pytest.raises(ValueError, match="unsupported database"):
        Store("mysql+pymysql://u:p@db.example/dunning")


def test_migration_creates_exactly_the_orm_schema(store: Store) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(conn).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}


def _schema_snapshot(store: Store) -> dict[str, Any]:
    with store.engine.connect() as conn:
        inspector = inspect(conn)
        return {
            table: (
                [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                sorted(i["name"] or "" for i in inspector.get_indexes(table)),
            )
            for table in sorted(inspector.get_table_names())
        }


def test_upgrade_twice_is_a_no_op(store: Store) -> None:
    store.publish_policy(name="default", yaml_text="steps: []\n", published_by="ops")
    before = _schema_snapshot(store)
    store.upgrade()
    assert _schema_snapshot(store) == before
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "migrations must form one line"
    head = script.get_current_head()
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            head
        ]
    assert [p.name for p in store.list_policies()] == ["default"]


def test_concurrent_upgrades_serialize(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    try:
        in_threads(4, lambda i: stores[i].upgrade())
        with stores[0].engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert versions == [(head,)]
        assert stores[1].webhook_event_counts()["received"] == 0
    finally:
        for s in stores:
            s.dispose()


def test_concurrent_upgrades_of_different_databases_in_one_process(tmp_path: Path) -> None:
    # Alembic's context is process-global, so threads migrating separate databases collide
    # unless the store serializes them.
    stores = [Store(f"sqlite:///{tmp_path / f'db{i}.db'}") for i in range(4)]
    try:
        in_threads(4, lambda i: stores[i].upgrade())
        for s in stores:
            assert set(inspect(s.engine).get_table_names()) == set(Base.metadata.tables) | {
                "alembic_version"
            }
    finally:
        for s in stores:
            s.dispose()


def test_check_constraints_reject_unknown_status(store: Store) -> None:
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_events (event_id, source, type, received_at, payload, status)"
                " VALUES ('evt_x', 'stripe', 't', :at, '{}', 'bogus')"
            ),
            {"at": T0.replace(tzinfo=None)},
        )


def test_placement_export_foreign_key_is_enforced(store: Store) -> None:
    placement = {
        "placement_id": "pl_1",
        "journey_id": "dunning-in_1",
        "customer_id": "cus_1",
        "contact": {"email": "ada@example.com"},
        "amount": 4900,
        "currency": "usd",
        "original_due_date": T0,
        "first_failure_at": T0,
        "attempts_summary": [],
        "messages_summary": [],
        "disputed": False,
        "created_at": T0,
    }
    with pytest.raises(IntegrityError), Session(store.engine) as session, session.begin():
        session.add(Placement(**placement, export_id="exp_missing"))
    with Session(store.engine) as session, session.begin():
        session.add(
            Export(
                export_id="exp_1",
                business_date=date(2026, 11, 2),
                created_at=T0,
                files=[{"name": "placements.csv"}],
                manifest={"count": 1},
            )
        )
        session.flush()
        session.add(Placement(**placement, export_id="exp_1"))
    with Session(store.engine) as session:
        stored = session.get_one(Placement, "pl_1")
        assert stored.export_id == "exp_1"
        assert stored.first_failure_at == T0 and stored.contact == {"email": "ada@example.com"}


# -- policies ------------------------------------------------------------------------------


def test_publish_policy_is_idempotent_and_versioned_by_content(store: Store) -> None:
    text_v1 = "name: default\nsteps:\n  - retry: 3d\n"
    first = store.publish_policy(name="default", yaml_text=text_v1, published_by="ops@a")
    assert first.version.startswith("default@") and len(first.version) == len("default@") + 12
    assert first.sha256.startswith(first.version.removeprefix("default@"))
    assert first.published_at.tzinfo is not None

    again = store.publish_policy(name="default", yaml_text=text_v1, published_by="someone-else")
    assert again == first  # original publisher and timestamp kept

    second = store.publish_policy(
        name="default", yaml_text=text_v1 + "# tweak\n", published_by="ops"
    )
    assert second.version != first.version
    assert store.get_policy(first.version) == first
    assert store.get_policy(first.version).yaml_text == text_v1  # type: ignore[union-attr]
    assert store.get_policy("default@000000000000") is None
    assert [p.version for p in store.list_policies()] == [second.version, first.version]


# -- card ledger ---------------------------------------------------------------------------


def test_reserve_grants_inserts_and_reports_history(store: Store) -> None:
    seen: list[list[CardAttemptRecord]] = []

    def allow(history: list[CardAttemptRecord]) -> bool:
        seen.append(history)
        return True

    granted, history = store.reserve_card_attempt(attempt("dunning-in_1", 1), allow)
    assert granted and history == [] and seen == [[]]

    granted, history = store.reserve_card_attempt(
        attempt("dunning-in_2", 1, at=T0 + timedelta(hours=1)), allow
    )
    assert granted
    assert [(h.journey_id, h.status) for h in history] == [("dunning-in_1", "reserved")]
    assert seen[-1] == history

    stored = store.attempts_for_journey("dunning-in_2")
    assert len(stored) == 1 and stored[0].id is not None
    assert stored[0].model_dump(exclude={"id"}) == attempt(
        "dunning-in_2", 1, at=T0 + timedelta(hours=1)
    ).model_dump(exclude={"id"})


def test_reserve_retry_of_same_attempt_is_granted_without_check(store: Store) -> None:
    assert store.reserve_card_attempt(attempt("dunning-in_1", 1), lambda h: True)[0]
    assert store.reserve_card_attempt(attempt("dunning-in_2", 1), lambda h: True)[0]

    def must_not_run(history: list[CardAttemptRecord]) -> bool:
        raise AssertionError("check called for an already reserved attempt")

    granted, history = store.reserve_card_attempt(attempt("dunning-in_1", 1), must_not_run)
    assert granted
    assert [(h.journey_id, h.attempt_number) for h in history] == [("dunning-in_2", 1)]
    assert len(store.attempts_for_journey("dunning-in_1")) == 1

    with pytest.raises(ValueError, match="already reserved"):
        store.reserve_card_attempt(attempt("dunning-in_1", 1, card_key="fp_other"), must_not_run)


def test_reserve_can_record_an_attempt_already_made(store: Store) -> None:
    initial = attempt("dunning-in_1", 0).model_copy(
        update={"status": "declined", "decline_code": "insufficient_funds"}
    )
    granted, _ = store.reserve_card_attempt(initial, lambda h: True)
    assert granted
    (row,) = store.attempts_for_journey("dunning-in_1")
    assert (row.attempt_number, row.status, row.decline_code) == (
        0,
        "declined",
        "insufficient_funds",
    )
    granted, history = store.reserve_card_attempt(attempt("dunning-in_1", 1), lambda h: True)
    assert granted and [h.status for h in history] == ["declined"]
    statuses = [a.status for a in store.attempts_for_journey("dunning-in_1")]
    assert statuses == ["declined", "reserved"]


def test_reserve_denied_inserts_nothing(store: Store) -> None:
    store.reserve_card_attempt(attempt("dunning-in_1", 1), lambda h: True)
    granted, history = store.reserve_card_attempt(attempt("dunning-in_1", 2), lambda h: len(h) < 1)
    assert not granted and len(history) == 1
    assert [a.attempt_number for a in store.attempts_for_journey("dunning-in_1")] == [1]


def test_reserve_history_window_is_31_days_before_the_reservation(store: Store) -> None:
    old = T0 - timedelta(days=31, seconds=1)
    recent = T0 - timedelta(days=30)
    store.reserve_card_attempt(attempt("dunning-in_old", 1, at=old), lambda h: True)
    store.reserve_card_attempt(attempt("dunning-in_recent", 1, at=recent), lambda h: True)
    store.reserve_card_attempt(attempt("dunning-in_other", 1, card_key="fp_x"), lambda h: True)

    granted, history = store.reserve_card_attempt(attempt("dunning-in_now", 1), lambda h: True)
    assert granted and [h.journey_id for h in history] == ["dunning-in_recent"]
    assert [h.journey_id for h in store.card_history("fp_card", old)] == [
        "dunning-in_old",
        "dunning-in_recent",
        "dunning-in_now",
    ]
    assert store.card_history("fp_card", T0 + timedelta(seconds=1)) == []


def test_check_exception_rolls_back(store: Store) -> None:
    def boom(history: list[CardAttemptRecord]) -> bool:
        raise RuntimeError("policy bug")

    with pytest.raises(RuntimeError):
        store.reserve_card_attempt(attempt(), boom)
    assert store.attempts_for_journey("dunning-in_1") == []


def test_record_attempt_outcome(store: Store) -> None:
    store.reserve_card_attempt(attempt("dunning-in_1", 1), lambda h: True)
    later = attempt("dunning-in_1", 2, at=T0 + timedelta(days=3))
    store.reserve_card_attempt(later, lambda h: True)
    store.record_attempt_outcome(
        "dunning-in_1",
        1,
        status="declined",
        decline_code="insufficient_funds",
        network_decline_code="51",
        advice_code="try_again_later",
        network_advice_code="02",
        decline_class="soft",
        charge_id="ch_1",
    )
    store.record_attempt_outcome("dunning-in_1", 2, status="succeeded", charge_id="ch_2")
    first, second = store.attempts_for_journey("dunning-in_1")
    assert (first.status, first.decline_code, first.network_decline_code) == (
        "declined",
        "insufficient_funds",
        "51",
    )
    assert (first.advice_code, first.network_advice_code, first.decline_class, first.charge_id) == (
        "try_again_later",
        "02",
        "soft",
        "ch_1",
    )
    assert (second.status, second.charge_id, second.decline_code) == ("succeeded", "ch_2", None)

    with pytest.raises(RecordNotFound):
        store.record_attempt_outcome("dunning-in_1", 9, status="declined")
    with pytest.raises(ValueError, match="unknown"):
        store.record_attempt_outcome("dunning-in_1", 1, status="bounced")


@pytest.mark.parametrize("allowed", [1, 3])
def test_concurrent_reservations_never_exceed_the_budget(store: Store, allowed: int) -> None:
    def reserve(i: int) -> bool:
        granted, _ = store.reserve_card_attempt(
            attempt(f"dunning-in_{i}", 1, card_key="fp_shared"), lambda h: len(h) < allowed
        )
        return granted

    results = in_threads(10, reserve)
    assert sum(results) == allowed
    assert len(store.card_history("fp_shared", T0 - timedelta(days=1))) == allowed


_RACE_WORKER = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from dunning.store import CardAttemptRecord, Store

    url, worker, attempts, allowed, sync = sys.argv[1:6]
    store = Store(url)
    store.upgrade()  # every process migrates the fresh database at once
    Path(sync, f"ready-{worker}").touch()
    deadline = time.monotonic() + 60
    while not Path(sync, "go").exists():
        if time.monotonic() > deadline:
            sys.exit("never released")
        time.sleep(0.005)
    granted = 0
    for number in range(1, int(attempts) + 1):
        ok, _ = store.reserve_card_attempt(
            CardAttemptRecord(
                journey_id=f"dunning-in_{worker}", attempt_number=number, card_key="fp_shared",
                amount=100, currency="usd", at=datetime.now(UTC),
            ),
            lambda history: len(history) < int(allowed),
        )
        granted += ok
    print(granted)
    """
)


def test_reservations_from_several_processes_never_exceed_the_budget(
    db_url: str, tmp_path: Path
) -> None:
    workers, attempts, allowed = 4, 3, 5
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE_WORKER, db_url]
            + [str(w), str(attempts), str(allowed), str(sync)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(sync.glob("ready-*"))) < workers:
            failed = [p for p in procs if p.poll() not in (None, 0)]
            assert not failed, failed[0].communicate()[1]
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.01)
        (sync / "go").touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * workers, [err for _, err in outputs]
    assert sum(int(out) for out, _ in outputs) == allowed
    store = Store(db_url)
    try:
        assert len(store.card_history("fp_shared", T0 - timedelta(days=1))) == allowed
    finally:
        store.dispose()


# -- messages ------------------------------------------------------------------------------


def test_claim_message_is_exactly_once(store: Store) -> None:
    claimed = store.claim_message(message())
    assert claimed.dedupe_key == message_dedupe_key("dunning-in_1", "reminder-1", "email")
    assert claimed.dedupe_key == "dunning-in_1:reminder-1:email"
    assert claimed.status == "claimed" and claimed.id is not None
    assert claimed.created_at is not None and claimed.created_at.tzinfo is not None

    sent_at = T0 + timedelta(minutes=1)
    store.mark_message(
        claimed.dedupe_key,
        status="sent",
        provider="sendgrid",
        provider_message_id="sg_1",
        sent_at=sent_at,
    )
    retry = store.claim_message(message(subject="a different rendering"))
    assert retry.id == claimed.id
    assert (retry.status, retry.subject, retry.provider_message_id, retry.sent_at) == (
        "sent",
        "Your payment failed",
        "sg_1",
        sent_at,
    )
    assert len(store.messages_for_journey("dunning-in_1")) == 1


def test_concurrent_claims_return_one_row(store: Store) -> None:
    claims = in_threads(8, lambda i: store.claim_message(message(body_text=f"render {i}")))
    assert len({c.id for c in claims}) == 1
    assert len({c.body_text for c in claims}) == 1
    assert len(store.messages_for_journey("dunning-in_1")) == 1


def test_mark_message(store: Store) -> None:
    key = store.claim_message(message()).dedupe_key
    store.mark_message(key, status="failed", provider="sendgrid", error="503 from provider")
    (row,) = store.messages_for_journey("dunning-in_1")
    assert (row.status, row.provider, row.error, row.sent_at) == (
        "failed",
        "sendgrid",
        "503 from provider",
        None,
    )
    store.mark_message(key, status="sent", provider_message_id="sg_9")
    (row,) = store.messages_for_journey("dunning-in_1")
    assert (row.status, row.provider, row.provider_message_id, row.error) == (
        "sent",
        "sendgrid",
        "sg_9",
        None,
    )
    assert row.sent_at is not None and row.sent_at.tzinfo is not None
    with pytest.raises(RecordNotFound):
        store.mark_message("nope:x:email", status="sent")
    with pytest.raises(ValueError, match="unknown"):
        store.mark_message(key, status="delivered")


def test_message_queries(store: Store) -> None:
    store.claim_message(message("reminder-1", created_at=T0))
    store.claim_message(message("reminder-1", channel="sms", created_at=T0 + timedelta(hours=1)))
    store.claim_message(message("reminder-2", created_at=T0 + timedelta(days=2)))
    store.claim_message(
        message("reminder-1", journey_id="dunning-in_2", customer_id="cus_2", created_at=T0)
    )
    recent = store.messages_for_customer("cus_1", T0 + timedelta(minutes=30))
    assert [m.dedupe_key for m in recent] == [
        "dunning-in_1:reminder-1:sms",
        "dunning-in_1:reminder-2:email",
    ]
    assert len(store.messages_for_customer("cus_1", T0)) == 3
    assert [m.customer_id for m in store.messages_for_journey("dunning-in_2")] == ["cus_2"]
    assert store.messages_for_journey("dunning-in_9") == []


# -- contact preferences -------------------------------------------------------------------


def test_opt_out_upserts_per_channel(store: Store) -> None:
    assert store.opted_out_channels("cus_1") == set()
    store.set_opt_out("cus_1", "email", True, "unsubscribe_link")
    store.set_opt_out("cus_1", "sms", True, "twilio_stop")
    store.set_opt_out("cus_2", "sms", True, "twilio_stop")
    assert store.opted_out_channels("cus_1") == {"email", "sms"}
    store.set_opt_out("cus_1", "sms", False, "twilio_start")
    store.set_opt_out("cus_1", "sms", False, "twilio_start")
    assert store.opted_out_channels("cus_1") == {"email"}
    assert store.opted_out_channels("cus_2") == {"sms"}


# -- webhook inbox -------------------------------------------------------------------------


def test_webhook_inbox(store: Store) -> None:
    payload = {"id": "evt_1", "data": {"object": {"id": "in_1", "amount_due": 4900}}}
    assert store.record_webhook_event(
        event_id="evt_1", source="stripe", type="invoice.payment_failed", payload=payload
    )
    assert not store.record_webhook_event(
        event_id="evt_1", source="stripe", type="invoice.payment_failed", payload={}
    )
    assert store.record_webhook_event(
        event_id="SM1", source="twilio", type="message.status", payload={"MessageStatus": "failed"}
    )
    counts = {"received": 2, "processed": 0, "ignored": 0, "failed": 0}
    assert store.webhook_event_counts() == counts
    store.mark_webhook_event("evt_1", "processed")
    store.mark_webhook_event("SM1", "failed", error="unknown message")
    counts = {"received": 0, "processed": 1, "ignored": 0, "failed": 1}
    assert store.webhook_event_counts() == counts
    assert (store.webhook_event_status("evt_1"), store.webhook_event_status("evt_missing")) == ("processed", None)
    assert (store.webhook_event_payload("evt_1"), store.webhook_event_payload("evt_missing")) == (payload, None)
    with Session(store.engine) as session:
        stored = session.scalars(select(WebhookEvent).where(WebhookEvent.event_id == "evt_1")).one()
        assert (stored.payload, stored.source, stored.error) == (payload, "stripe", None)
        assert stored.received_at.tzinfo is not None
    with pytest.raises(RecordNotFound):
        store.mark_webhook_event("evt_missing", "processed")
    with pytest.raises(ValueError, match="unknown"):
        store.mark_webhook_event("evt_1", "done")


def test_concurrent_duplicate_webhooks_never_raise(store: Store) -> None:
    results = in_threads(
        8,
        lambda i: store.record_webhook_event(
            event_id="evt_dup", source="stripe", type="invoice.paid", payload={"n": i}
        ),
    )
    assert sorted(results) == [False] * 7 + [True]
    assert store.webhook_event_counts()["received"] == 1


def test_stale_webhook_events(store: Store) -> None:
    now = datetime.now(UTC)
    rows = [  # (event id, source, status, age)
        ("evt_crashed", "stripe", "received", timedelta(minutes=5)),
        ("evt_failed", "stripe", "failed", timedelta(days=1)),
        ("evt_failed_long_ago", "stripe", "failed", timedelta(days=4)),
        ("evt_processed", "stripe", "processed", timedelta(minutes=5)),
        ("evt_in_flight", "stripe", "received", timedelta(0)),
        ("SM1", "twilio", "received", timedelta(minutes=5)),
    ]
    for event_id, source, status, _ in rows:
        store.record_webhook_event(event_id=event_id, source=source, type="t", payload={"id": event_id})
        if status != "received":
            store.mark_webhook_event(event_id, status)
    with Session(store.engine) as session, session.begin():
        for event_id, _, _, age in rows:
            session.execute(
                update(WebhookEvent).where(WebhookEvent.event_id == event_id).values(received_at=now - age)
            )
    stale = store.stale_webhook_events(
        source="stripe", received_before=now - timedelta(minutes=1), failed_since=now - timedelta(days=3)
    )
    assert stale == [("evt_crashed", {"id": "evt_crashed"}), ("evt_failed", {"id": "evt_failed"})]


# -- journeys projection -------------------------------------------------------------------


def test_upsert_and_get_journey(store: Store) -> None:
    original = journey()
    store.upsert_journey(original)
    assert store.get_journey("dunning-in_1") == original
    assert store.get_journey("dunning-in_missing") is None

    later = journey(
        stage=Stage.recovered,
        updated_at=T0 + timedelta(days=3),
        ended_at=T0 + timedelta(days=3),
        next_action=None,
        next_action_at=None,
        recovered_amount=4900,
        attempts_count=2,
        messages_count=1,
        timeline=[{"event": "started"}, {"event": "recovered"}],
    )
    store.upsert_journey(later)
    assert store.get_journey("dunning-in_1") == later

    store.upsert_journey(journey(updated_at=T0 + timedelta(days=1)))  # stale snapshot
    assert store.get_journey("dunning-in_1") == later


def test_list_journeys_filters(store: Store) -> None:
    store.upsert_journey(journey("dunning-in_1", updated_at=T0))
    store.upsert_journey(
        journey("dunning-in_2", stage=Stage.paused, updated_at=T0 + timedelta(hours=2))
    )
    store.upsert_journey(
        journey("dunning-in_3", customer_id="cus_3", updated_at=T0 + timedelta(hours=1))
    )
    ids = lambda rows: [r.journey_id for r in rows]  # noqa: E731
    assert ids(store.list_journeys()) == ["dunning-in_2", "dunning-in_3", "dunning-in_1"]
    assert ids(store.list_journeys(stage="retrying")) == ["dunning-in_3", "dunning-in_1"]
    assert ids(store.list_journeys(stage=Stage.paused)) == ["dunning-in_2"]
    assert ids(store.list_journeys(customer_id="cus_3")) == ["dunning-in_3"]
    assert ids(store.list_journeys(since=T0 + timedelta(minutes=30))) == [
        "dunning-in_2",
        "dunning-in_3",
    ]
    assert ids(store.list_journeys(limit=1)) == ["dunning-in_2"]


# -- audit ---------------------------------------------------------------------------------


def test_audit_log(store: Store) -> None:
    store.audit(actor="ops@example.com", action="pause", target="dunning-in_1", reason="dispute")
    store.audit(
        actor="cli",
        action="publish_policy",
        target="default@3f2a9c1b0d4e",
        details={"steps": 4, "nested": {"ok": True}},
    )
    entries = store.audit_entries()
    assert [(e.action, e.target) for e in entries] == [
        ("pause", "dunning-in_1"),
        ("publish_policy", "default@3f2a9c1b0d4e"),
    ]
    assert entries[0].reason == "dispute" and entries[0].details is None
    assert entries[1].details == {"steps": 4, "nested": {"ok": True}}
    assert entries[0].at.tzinfo is not None and entries[0].at <= entries[1].at
    (only,) = store.audit_entries(target="dunning-in_1")
    assert only.actor == "ops@example.com"
    assert store.audit_entries(target="nobody") == []


# -- time zones ----------------------------------------------------------------------------


def test_datetimes_round_trip_as_utc(store: Store) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    local = datetime(2026, 11, 1, 15, 30, 0, 123456, tzinfo=india)  # == T0 + 123456us
    store.upsert_journey(journey(started_at=local, updated_at=local, next_action_at=local))
    stored = store.get_journey("dunning-in_1")
    assert stored is not None
    for value in (stored.started_at, stored.updated_at, stored.next_action_at):
        assert value == local
        assert value.utcoffset() == timedelta(0)
        assert value.replace(tzinfo=None) == datetime(2026, 11, 1, 10, 0, 0, 123456)

    # Range filters compare instants, whatever offset the caller used.
    store.reserve_card_attempt(attempt(at=local), lambda h: True)
    assert len(store.card_history("fp_card", local.astimezone(timezone(timedelta(hours=-8))))) == 1
    assert store.card_history("fp_card", local + timedelta(microseconds=1)) == []


def test_naive_datetimes_are_rejected(store: Store) -> None:
    with pytest.raises(ValidationError):
        journey(started_at=datetime(2026, 11, 1, 10, 0))
    with pytest.raises(StatementError, match="naive datetime"):
        store.card_history("fp_card", datetime(2026, 11, 1, 10, 0))
