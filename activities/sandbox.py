"""The embedded payment gateway used when no STRIPE_API_KEY is set: deterministic, scenario-driven.

State lives in one SQLite file (stdlib sqlite3, WAL) so that several worker processes, the
simulator and tests share it. Like Stripe, a charge is stored once per idempotency key and a
repeated request with that key returns the stored outcome without charging again.

Deterministic rules:
* The outcome is the payment method's registered behaviour evaluated at `request.at` (the
  workflow's decision time), so replaying a journey gives the same results.
* A method is looked up under the charged payment first, then under the same customer's other
  registered payments (earliest registration first). A method registered nowhere, or a payment
  never registered, declines with `generic_decline` (the `Behavior` default), never succeeds.
* Charge ids are derived from the idempotency key, so they too are reproducible.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from dunning.models import ChargeOutcome, Decline, FailedPayment, PaymentMethod
from dunning.ports import (
    ChargeRequest,
    CollectionContext,
    EscalationRequest,
    ReconcileRequest,
    idempotency_key,
)
from dunning.scenarios import Behavior, Scenario, ScenarioPaymentMethod

BUSY_TIMEOUT_S = 10.0
FaultKind = Literal["timeout", "server_error"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandbox_payments (
    payment_reference TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    scenario TEXT NOT NULL,
    registered_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sandbox_payments_customer ON sandbox_payments (customer_id);
CREATE TABLE IF NOT EXISTS sandbox_methods (
    payment_reference TEXT NOT NULL,
    payment_method_id TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    attached INTEGER NOT NULL,
    method TEXT NOT NULL,
    behavior TEXT NOT NULL,
    PRIMARY KEY (payment_reference, payment_method_id)
);
CREATE TABLE IF NOT EXISTS sandbox_charges (
    idempotency_key TEXT PRIMARY KEY,
    journey_id TEXT NOT NULL,
    attempt_number INTEGER NOT NULL,
    payment_reference TEXT NOT NULL,
    payment_method_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (journey_id, attempt_number)
);
CREATE TABLE IF NOT EXISTS sandbox_escalations (
    journey_id TEXT NOT NULL,
    action TEXT NOT NULL,
    payment_reference TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    subscription_id TEXT,
    coupon TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (journey_id, action)
);
CREATE TABLE IF NOT EXISTS sandbox_faults (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kind TEXT NOT NULL,
    remaining INTEGER NOT NULL
);
"""


class SandboxFault(ConnectionError):
    """An injected transient failure (lost response or 5xx); Temporal retries the activity."""


@dataclass(frozen=True)
class SandboxCharge:
    idempotency_key: str
    journey_id: str
    attempt_number: int
    payment_reference: str
    payment_method_id: str
    amount: int
    currency: str
    at: datetime
    outcome: ChargeOutcome


@dataclass(frozen=True)
class SandboxEscalation:
    journey_id: str
    action: str
    payment_reference: str
    customer_id: str
    subscription_id: str | None
    coupon: str | None


def _charge_id(key: str) -> str:
    return "ch_sandbox_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def _payment_intent_id(request: ChargeRequest) -> str:
    if request.payment_kind == "payment_intent":
        return request.payment_reference
    return "pi_sandbox_" + hashlib.sha256(request.payment_reference.encode("utf-8")).hexdigest()[:20]


class SandboxGateway:
    name = "sandbox"

    def __init__(self, path: str | Path, public_url: str = "http://localhost:8000") -> None:
        self.path = Path(path)
        self.public_url = public_url.rstrip("/")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            # WAL lets readers in other processes proceed while one writes.
            conn.execute("PRAGMA journal_mode=WAL")
            with self._transaction(conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call: safe from any thread of the activity pool.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front: a read-then-write deferred transaction can
        # fail with SQLITE_BUSY when another process commits in between.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn, self._transaction(conn):
            yield conn

    # -- scenario data --------------------------------------------------------------------------

    def register(self, scenario: Scenario) -> None:
        """Store the scenario's methods and behaviours (replacing an earlier registration).

        The method the customer adds later (customer_response) is stored detached: its behaviour
        is known, but it joins the collection context only once `attach_payment_method` is called.
        """
        later = scenario.customer_response.new_payment_method if scenario.customer_response else None
        with self._write() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(registered_seq), 0) + 1 FROM sandbox_payments").fetchone()[0]
            existing = conn.execute(
                "SELECT registered_seq FROM sandbox_payments WHERE payment_reference = ?", (scenario.id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO sandbox_payments (payment_reference, customer_id, scenario, registered_seq)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (payment_reference) DO UPDATE SET"
                " customer_id = excluded.customer_id, scenario = excluded.scenario",
                (scenario.id, scenario.customer.id, scenario.model_dump_json(), existing[0] if existing else seq),
            )
            conn.execute("DELETE FROM sandbox_methods WHERE payment_reference = ?", (scenario.id,))
            methods = [(m, True) for m in scenario.payment_methods] + ([(later, False)] if later else [])
            for position, (method, attached) in enumerate(methods):
                self._put_method(conn, scenario.id, scenario.customer.id, position, method, attached)

    @staticmethod
    def _put_method(
        conn: sqlite3.Connection,
        payment_reference: str,
        customer_id: str,
        position: int,
        method: ScenarioPaymentMethod,
        attached: bool,
    ) -> None:
        conn.execute(
            "INSERT INTO sandbox_methods (payment_reference, payment_method_id, customer_id, position,"
            " attached, method, behavior) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                payment_reference,
                method.id,
                customer_id,
                position,
                int(attached),
                method.to_payment_method().model_dump_json(),
                method.behavior.model_dump_json(),
            ),
        )

    def attach_payment_method(
        self, payment_reference: str, method: ScenarioPaymentMethod | str, *, default: bool = True
    ) -> PaymentMethod:
        """The customer adds a method (as in Stripe's hosted page); by id for one stored detached."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT customer_id FROM sandbox_payments WHERE payment_reference = ?", (payment_reference,)
            ).fetchone()
            if row is None:
                raise KeyError(f"payment {payment_reference!r} is not registered in the sandbox")
            customer_id = row[0]
            if isinstance(method, str):
                stored = conn.execute(
                    "SELECT method, behavior FROM sandbox_methods WHERE payment_reference = ? AND payment_method_id = ?",
                    (payment_reference, method),
                ).fetchone()
                if stored is None:
                    raise KeyError(f"payment method {method!r} is not known for {payment_reference!r}")
                method = ScenarioPaymentMethod.model_validate(
                    {**json.loads(stored[0]), "behavior": json.loads(stored[1])}
                )
            method = method.model_copy(update={"default": default})
            conn.execute(
                "DELETE FROM sandbox_methods WHERE payment_reference = ? AND payment_method_id = ?",
                (payment_reference, method.id),
            )
            if default:
                # Only one default; it goes first, like the method Stripe would charge first.
                for pm_id, text in conn.execute(
                    "SELECT payment_method_id, method FROM sandbox_methods WHERE payment_reference = ?",
                    (payment_reference,),
                ).fetchall():
                    plain = PaymentMethod.model_validate_json(text).model_copy(update={"default": False})
                    conn.execute(
                        "UPDATE sandbox_methods SET method = ?, position = position + 1"
                        " WHERE payment_reference = ? AND payment_method_id = ?",
                        (plain.model_dump_json(), payment_reference, pm_id),
                    )
                position = 0
            else:
                position = conn.execute(
                    "SELECT COALESCE(MAX(position), -1) + 1 FROM sandbox_methods WHERE payment_reference = ?",
                    (payment_reference,),
                ).fetchone()[0]
            self._put_method(conn, payment_reference, customer_id, position, method, True)
            return method.to_payment_method()

    def _behavior(self, conn: sqlite3.Connection, payment_reference: str, pm_id: str) -> Behavior | None:
        row = conn.execute(
            "SELECT behavior FROM sandbox_methods WHERE payment_reference = ? AND payment_method_id = ?",
            (payment_reference, pm_id),
        ).fetchone()
        if row is None:
            row = conn.execute(
                "SELECT m.behavior FROM sandbox_methods m"
                " JOIN sandbox_payments p ON p.payment_reference = m.payment_reference"
                " WHERE m.payment_method_id = ? AND m.customer_id ="
                " (SELECT customer_id FROM sandbox_payments WHERE payment_reference = ?)"
                " ORDER BY p.registered_seq LIMIT 1",
                (pm_id, payment_reference),
            ).fetchone()
        return Behavior.model_validate_json(row[0]) if row is not None else None

    # -- faults (tests) -------------------------------------------------------------------------

    def fail_next(self, n: int, kind: FaultKind = "timeout") -> None:
        """Make the next `n` charge calls fail transiently: "timeout" after the charge is made
        (the response is lost), "server_error" before anything is charged."""
        if kind not in ("timeout", "server_error"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sandbox_faults (id, kind, remaining) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, remaining = excluded.remaining",
                (kind, n),
            )

    @staticmethod
    def _take_fault(conn: sqlite3.Connection) -> str | None:
        row = conn.execute("SELECT kind, remaining FROM sandbox_faults WHERE id = 1").fetchone()
        if row is None or row[1] <= 0:
            return None
        conn.execute("UPDATE sandbox_faults SET remaining = remaining - 1 WHERE id = 1")
        return row[0]

    # -- PaymentGateway -------------------------------------------------------------------------

    def collection_context(self, payment: FailedPayment) -> CollectionContext:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT method FROM sandbox_methods WHERE payment_reference = ? AND attached = 1"
                " ORDER BY position, payment_method_id",
                (payment.id,),
            ).fetchall()
        methods = tuple(PaymentMethod.model_validate_json(r[0]) for r in rows) or payment.payment_methods
        return CollectionContext(
            payment_methods=methods, update_url=f"{self.public_url}/sandbox/pay/{payment.id}"
        )

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        key = request.idempotency_key
        method = request.payment_method
        with self._connect() as conn:
            with self._transaction(conn):
                fault = self._take_fault(conn)
            if fault == "server_error":
                raise SandboxFault(f"sandbox: injected server error before charging {key}")
            with self._transaction(conn):
                stored = conn.execute(
                    "SELECT payment_reference, payment_method_id, amount, currency, outcome"
                    " FROM sandbox_charges WHERE idempotency_key = ?",
                    (key,),
                ).fetchone()
                if stored is not None:
                    sent = (request.payment_reference, method.id, request.amount, request.currency)
                    if tuple(stored[:4]) != sent:
                        from activities.payments import permanent_error  # keeps this module light

                        # Stripe answers idempotency_error when a key is reused with other parameters.
                        raise permanent_error(
                            f"sandbox: idempotency key {key} was used for {tuple(stored[:4])}, now {sent}"
                        )
                    outcome = ChargeOutcome.model_validate_json(stored[4])
                else:
                    outcome = self._evaluate(conn, request)
                    conn.execute(
                        "INSERT INTO sandbox_charges (idempotency_key, journey_id, attempt_number,"
                        " payment_reference, payment_method_id, amount, currency, at, outcome, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            key,
                            request.journey_id,
                            request.attempt_number,
                            request.payment_reference,
                            method.id,
                            request.amount,
                            request.currency,
                            request.at.isoformat(),
                            outcome.model_dump_json(),
                            datetime.now(UTC).isoformat(),
                        ),
                    )
        if fault == "timeout":
            raise SandboxFault(f"sandbox: injected timeout after charging {key} (response lost)")
        return outcome

    def _evaluate(self, conn: sqlite3.Connection, request: ChargeRequest) -> ChargeOutcome:
        method = request.payment_method
        behavior = self._behavior(conn, request.payment_reference, method.id)
        ids = {
            "charge_id": _charge_id(request.idempotency_key),
            "payment_intent_id": _payment_intent_id(request),
        }
        if behavior is None:
            return ChargeOutcome(
                status="declined",
                decline=Decline(payment_method=method.id, decline_code="generic_decline"),
                message=f"sandbox: payment method {method.id} is not registered for {request.payment_reference}",
                **ids,
            )
        return behavior.outcome_at(request.at, method.id).model_copy(update=ids)

    def read_back(self, request: ReconcileRequest) -> ChargeOutcome:
        key = idempotency_key(request.journey_id, request.attempt_number)
        with self._connect() as conn:
            row = conn.execute("SELECT outcome FROM sandbox_charges WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            # Nothing reached the gateway under this key: the payment is still unpaid.
            return ChargeOutcome(status="declined", message=f"sandbox: no charge was made for {key}")
        return ChargeOutcome.model_validate_json(row[0])

    def escalate(self, request: EscalationRequest) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sandbox_escalations (journey_id, action, payment_reference, customer_id,"
                " subscription_id, coupon, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (journey_id, action) DO NOTHING",
                (
                    request.journey_id,
                    request.action.value,
                    request.payment_reference,
                    request.customer_id,
                    request.subscription_id,
                    request.coupon,
                    datetime.now(UTC).isoformat(),
                ),
            )

    # -- inspection (tests, ops) ----------------------------------------------------------------

    def charges_by_key(self) -> dict[str, SandboxCharge]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT idempotency_key, journey_id, attempt_number, payment_reference, payment_method_id,"
                " amount, currency, at, outcome FROM sandbox_charges ORDER BY journey_id, attempt_number"
            ).fetchall()
        return {
            r[0]: SandboxCharge(
                idempotency_key=r[0],
                journey_id=r[1],
                attempt_number=r[2],
                payment_reference=r[3],
                payment_method_id=r[4],
                amount=r[5],
                currency=r[6],
                at=datetime.fromisoformat(r[7]),
                outcome=ChargeOutcome.model_validate_json(r[8]),
            )
            for r in rows
        }

    def count_charges(self, journey_id: str) -> int:
        with self._connect() as conn:
            return conn.execute(
                "SELECT COUNT(*) FROM sandbox_charges WHERE journey_id = ?", (journey_id,)
            ).fetchone()[0]

    def escalations(self, journey_id: str | None = None) -> list[SandboxEscalation]:
        query = (
            "SELECT journey_id, action, payment_reference, customer_id, subscription_id, coupon"
            " FROM sandbox_escalations"
        )
        params: tuple[str, ...] = ()
        if journey_id is not None:
            query += " WHERE journey_id = ?"
            params = (journey_id,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY rowid", params).fetchall()
        return [SandboxEscalation(*row) for row in rows]
