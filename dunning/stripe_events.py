"""Stripe events → what they mean for journeys. One declarative table, pure functions, no I/O.

`ROUTES` maps each event type the engine acts on to an action, the journeys it targets, the
cases it deliberately ignores and what its object adds (the failed payment, the new method). `interpret(event)` turns a verified event (a plain dict) into an
`Instruction` that `dunning.api.webhooks` carries out. The builders of `FailedPayment` from
Stripe objects are shared with `dunning backfill` and `dunning start`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from dunning.models import Customer, Decline, FailedPayment, PaymentMethod

Json = dict[str, Any]

# The idempotency key of every Stripe call our own escalations make (StripeGateway.escalate):
# `<journey id>:escalate:<action>`. Stripe copies it into the event's `request.idempotency_key`.
_OUR_ESCALATION_KEY = re.compile(r"^dunning-[^\s]+:escalate:[a-z_]+$")


class Action(StrEnum):
    start = "start"  # signal-with-start payment_failed
    succeeded = "succeeded"  # signal payment_succeeded
    method_updated = "method_updated"  # update payment_method_updated on the customer's open journeys
    pause = "pause"
    resume = "resume"
    cancel = "cancel"

    @property
    def settles(self) -> bool:
        """Ends the payment for good: remembered, so a late failure event starts nothing."""
        return self in (Action.succeeded, Action.cancel)


class UnusableEvent(ValueError):
    """A verified event whose object cannot drive a journey (answered 200 and ignored)."""


# --- small readers ----------------------------------------------------------------------------


def id_of(value: Any) -> str | None:
    """An expandable field: an id, an expanded object, or nothing."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, Mapping):
        return value.get("id")
    return None


def from_unix(value: Any) -> datetime | None:
    """A Stripe timestamp (unix seconds) as a UTC time; None when absent."""
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), tz=UTC)


def _obj(event: Json) -> Json:
    return (event.get("data") or {}).get("object") or {}


def subscription_of(invoice: Json) -> str | None:
    details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
    # `parent.subscription_details` since API 2025-03-31; `subscription` before it
    return id_of(details.get("subscription")) or id_of(invoice.get("subscription"))


def _plan_of(invoice: Json) -> str | None:
    """The first line's price (segments may match on it); either API shape."""
    lines = ((invoice.get("lines") or {}).get("data")) or []
    if not lines:
        return None
    line = lines[0]
    details = ((line.get("pricing") or {}).get("price_details")) or {}
    price = details.get("price") or line.get("price") or (line.get("plan") or {})
    if isinstance(price, Mapping):
        return price.get("lookup_key") or price.get("id")
    return price or None


def _decline_of(error: Json | None) -> Decline:
    """Decline fields of a Stripe error object (`last_payment_error`)."""
    if not error:
        return Decline()
    code = error.get("code")
    return Decline(
        payment_method=id_of(error.get("payment_method")),
        decline_code=error.get("decline_code") or (code if code and code != "card_declined" else None),
        advice_code=error.get("advice_code"),
        network_decline_code=error.get("network_decline_code"),
        network_advice_code=error.get("network_advice_code"),
    )


def payment_method_from(pm: Json, *, default: bool = True) -> PaymentMethod:
    """A Stripe PaymentMethod object. A method the customer just added is tried first (default)."""
    kind = pm.get("type") or "card"
    details = pm.get(kind) or {}
    return PaymentMethod(
        id=pm["id"],
        type=kind,
        brand=details.get("brand") if kind == "card" else None,
        funding=details.get("funding") if kind == "card" else None,
        country=details.get("country"),
        exp_month=details.get("exp_month"),
        exp_year=details.get("exp_year"),
        default=default,
        fingerprint=details.get("fingerprint"),
    )


def invoice_payments_query(intent_id: str) -> Json:
    """Params of `invoice_payments.list` that find the invoice a PaymentIntent pays: since API
    2025-03-31 the PaymentIntent no longer names it."""
    return {"payment": {"type": "payment_intent", "payment_intent": intent_id}, "limit": 1}


def invoice_of_payments(invoice_payments: Iterable[Json]) -> str | None:
    """The invoice (id) of the first listed InvoicePayment that names one."""
    return next((invoice for item in invoice_payments if (invoice := id_of(item.get("invoice")))), None)


# --- FailedPayment from Stripe objects -----------------------------------------------------------


def _payment(data: Json, what: str) -> FailedPayment:
    try:
        return FailedPayment.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'object'}: {e['msg']}" for e in error.errors()
        )
        raise UnusableEvent(f"{what} cannot start a journey: {problems}") from error


def payment_from_invoice(invoice: Json, failed_at: datetime) -> FailedPayment:
    """A failed invoice. Decline fields are not on invoices: the gateway adds them when the journey opens."""
    customer_id = id_of(invoice.get("customer"))
    if not customer_id:
        raise UnusableEvent(f"invoice {invoice.get('id')} has no customer")
    amount = invoice.get("amount_remaining")
    if amount is None:
        amount = invoice.get("amount_due")
    address = invoice.get("customer_address") or {}
    return _payment(
        {
            "id": invoice.get("id"),
            "kind": "invoice",
            "amount": amount,
            "currency": invoice.get("currency"),
            "failed_at": failed_at,
            "customer": Customer(
                id=customer_id,
                name=invoice.get("customer_name"),
                email=invoice.get("customer_email"),
                phone=invoice.get("customer_phone"),
                country=address.get("country"),
            ),
            "subscription_id": subscription_of(invoice),
            "plan": _plan_of(invoice),
            "due_date": from_unix(invoice.get("due_date")),
        },
        f"invoice {invoice.get('id')}",
    )


def payment_from_intent(intent: Json, failed_at: datetime) -> FailedPayment:
    """A failed PaymentIntent without an invoice; contact details from the failed method's billing details."""
    customer_id = id_of(intent.get("customer"))
    if not customer_id:
        raise UnusableEvent(f"PaymentIntent {intent.get('id')} has no customer: nothing can be retried off-session")
    error = intent.get("last_payment_error") or {}
    method = error.get("payment_method") if isinstance(error.get("payment_method"), Mapping) else {}
    billing = (method or {}).get("billing_details") or {}
    return _payment(
        {
            "id": intent.get("id"),
            "kind": "payment_intent",
            "amount": intent.get("amount"),
            "currency": intent.get("currency"),
            "failed_at": failed_at,
            "customer": Customer(
                id=customer_id,
                name=billing.get("name"),
                email=intent.get("receipt_email") or billing.get("email"),
                phone=billing.get("phone"),
                country=(billing.get("address") or {}).get("country"),
            ),
            "payment_methods": (payment_method_from(method, default=True),) if method.get("id") else (),
            "initial_decline": _decline_of(error),
        },
        f"PaymentIntent {intent.get('id')}",
    )


# --- the table ------------------------------------------------------------------------------------


def _never(event: Json) -> str | None:
    return None


def intent_of_invoice(invoice: str) -> str:
    """Why a PaymentIntent failure of an invoice is ignored (found in the event, or by a lookup)."""
    return f"PaymentIntent of invoice {invoice}: its invoice.payment_failed drives the journey"


def _intent_of_an_invoice(event: Json) -> str | None:
    invoice = id_of(_obj(event).get("invoice"))
    return intent_of_invoice(invoice) if invoice else None


def _default_method_unchanged(event: Json) -> str | None:
    previous = ((event.get("data") or {}).get("previous_attributes")) or {}
    if "default_payment_method" not in (previous.get("invoice_settings") or {}):
        return "the customer's default payment method did not change"
    if not id_of((_obj(event).get("invoice_settings") or {}).get("default_payment_method")):
        return "the default payment method was removed, not replaced"
    return None


def _no_payment_method(event: Json) -> str | None:
    obj = _obj(event)
    if not id_of(obj.get("payment_method")):
        return "the SetupIntent saved no payment method"
    if not id_of(obj.get("customer")):
        return "the SetupIntent has no customer"
    return None


def _detached(event: Json) -> str | None:
    return None if id_of(_obj(event).get("customer")) else "the payment method has no customer"


def caused_by_us(event: Json) -> bool:
    """True for events our own escalations caused (hand-off, write-off, cancel_subscription)."""
    key = (event.get("request") or {}).get("idempotency_key") if isinstance(event.get("request"), Mapping) else None
    return bool(key and _OUR_ESCALATION_KEY.match(key))


def _ours(event: Json) -> str | None:
    if caused_by_us(event):
        return f"caused by the engine's own escalation ({event['request']['idempotency_key']})"
    return None


def _own_id(event: Json) -> tuple[str, ...]:
    return (_obj(event)["id"],)


def _intent_targets(event: Json) -> tuple[str, ...]:
    obj = _obj(event)
    return tuple(ref for ref in (id_of(obj.get("invoice")), obj.get("id")) if ref)


def _dispute_targets(event: Json) -> tuple[str, ...]:
    dispute = _obj(event)
    charge = dispute.get("charge") if isinstance(dispute.get("charge"), Mapping) else {}
    refs = (id_of(charge.get("invoice")), id_of(dispute.get("payment_intent")) or id_of(charge.get("payment_intent")))
    return tuple(dict.fromkeys(ref for ref in refs if ref))


def _latest_invoice(event: Json) -> tuple[str, ...]:
    latest = id_of(_obj(event).get("latest_invoice"))
    return (latest,) if latest else ()


def _customer_target(event: Json) -> tuple[str, ...]:
    obj = _obj(event)
    customer = obj.get("id") if obj.get("object") == "customer" else id_of(obj.get("customer"))
    return (customer,) if customer else ()


# Instruction fields an event's object adds (raise UnusableEvent when it cannot drive a journey).


def _no_details(obj: Json, created: datetime) -> dict[str, Any]:
    return {}


def _invoice_failure(invoice: Json, created: datetime) -> dict[str, Any]:
    return {"payment": payment_from_invoice(invoice, created)}


def _intent_failure(intent: Json, created: datetime) -> dict[str, Any]:
    # Since API 2025-03-31 PaymentIntents no longer carry `invoice`: absent ≠ null.
    return {"payment": payment_from_intent(intent, created), "invoice_unknown": "invoice" not in intent}


def _method(pm: Any) -> dict[str, Any]:
    """An expandable payment method: its details when expanded, else only its id."""
    if isinstance(pm, Mapping) and pm.get("id"):
        return {"payment_method": payment_method_from(pm)}
    return {"payment_method": PaymentMethod(id=id_of(pm) or "", default=True)}


def _attached_method(pm: Json, created: datetime) -> dict[str, Any]:
    return {"payment_method": payment_method_from(pm)}


def _new_default_method(customer: Json, created: datetime) -> dict[str, Any]:
    return _method((customer.get("invoice_settings") or {}).get("default_payment_method"))


def _saved_method(setup_intent: Json, created: datetime) -> dict[str, Any]:
    return _method(setup_intent.get("payment_method"))


def _deleted_subscription(subscription: Json, created: datetime) -> dict[str, Any]:
    customer = id_of(subscription.get("customer"))
    return {"subscription": (subscription["id"], customer)} if customer else {}


@dataclass(frozen=True)
class Route:
    action: Action
    targets: Callable[[Json], tuple[str, ...]]  # payment references (in_/pi_), or the customer id
    ignore: Callable[[Json], str | None] = _never  # a reason to ignore this event, or None
    reason: str = ""  # the journey timeline's wording for pause/resume/cancel
    deferred: bool = False  # carried out after answering (needs a worker, or a Stripe lookup)
    details: Callable[[Json, datetime], dict[str, Any]] = _no_details  # (object, created) -> Instruction fields


ROUTES: Mapping[str, Route] = {
    "invoice.payment_failed": Route(Action.start, _own_id, details=_invoice_failure),
    "payment_intent.payment_failed": Route(Action.start, _own_id, ignore=_intent_of_an_invoice, details=_intent_failure),
    "invoice.paid": Route(Action.succeeded, _own_id),
    "invoice.payment_succeeded": Route(Action.succeeded, _own_id),
    "payment_intent.succeeded": Route(Action.succeeded, _intent_targets),
    "payment_method.attached": Route(
        Action.method_updated, _customer_target, ignore=_detached, deferred=True, details=_attached_method
    ),
    "customer.updated": Route(
        Action.method_updated, _customer_target, ignore=_default_method_unchanged, deferred=True, details=_new_default_method
    ),
    "setup_intent.succeeded": Route(
        Action.method_updated, _customer_target, ignore=_no_payment_method, deferred=True, details=_saved_method
    ),
    # Deferred: finding the invoice of a disputed charge may need a Stripe lookup.
    "charge.dispute.created": Route(Action.pause, _dispute_targets, reason="a dispute was opened", deferred=True),
    "charge.dispute.closed": Route(Action.resume, _dispute_targets, reason="the dispute was closed", deferred=True),
    # Deferred: the subscription's other open journeys are found through visibility.
    "customer.subscription.deleted": Route(
        Action.cancel, _latest_invoice, ignore=_ours, reason="the subscription was deleted in Stripe", deferred=True,
        details=_deleted_subscription,
    ),
    "invoice.voided": Route(Action.cancel, _own_id, ignore=_ours, reason="the invoice was voided in Stripe"),
    "invoice.marked_uncollectible": Route(
        Action.cancel, _own_id, ignore=_ours, reason="the invoice was marked uncollectible in Stripe"
    ),
}


@dataclass(frozen=True)
class Instruction:
    """What one event asks for. `ignored` set = nothing to do (and why)."""

    event_id: str
    type: str
    created: datetime
    action: Action | None = None
    targets: tuple[str, ...] = ()
    reason: str = ""
    deferred: bool = False
    payment: FailedPayment | None = None  # for start
    payment_method: PaymentMethod | None = None  # for method_updated (may be only an id)
    invoice_unknown: bool = False  # a PaymentIntent failure whose payload cannot say if it has an invoice
    subscription: tuple[str, str] | None = None  # (subscription, customer) whose open journeys all end
    ignored: str | None = None


def event_header(event: Json) -> tuple[str, str, datetime]:
    """(id, type, created) of an event; raises UnusableEvent when one is missing."""
    event_id, kind, created = event.get("id"), event.get("type"), event.get("created")
    if not isinstance(event_id, str) or not event_id:
        raise UnusableEvent("the event has no `id`")
    if not isinstance(kind, str) or not kind:
        raise UnusableEvent(f"event {event_id} has no `type`")
    if not isinstance(created, int):
        raise UnusableEvent(f"event {event_id} has no integer `created` timestamp")
    return event_id, kind, from_unix(created)  # type: ignore[return-value]


def interpret(event: Json) -> Instruction:
    """What an event means for journeys. Raises UnusableEvent only for an event without id/type/created."""
    event_id, kind, created = event_header(event)
    route = ROUTES.get(kind)
    base = {"event_id": event_id, "type": kind, "created": created}
    if route is None:
        return Instruction(**base, ignored=f"event type {kind} is not one the engine acts on")
    if not isinstance(_obj(event).get("id"), str):
        return Instruction(**base, ignored="the event carries no object")
    skip = route.ignore(event)
    if skip:
        return Instruction(**base, action=route.action, ignored=skip)
    targets = route.targets(event)
    if not targets:
        missing = "customer" if route.action is Action.method_updated else "invoice or PaymentIntent"
        return Instruction(**base, action=route.action, ignored=f"the event names no {missing}")
    try:
        details = route.details(_obj(event), created)
    except UnusableEvent as error:
        return Instruction(**base, action=route.action, ignored=str(error))
    return Instruction(**base, action=route.action, targets=targets, reason=route.reason, deferred=route.deferred, **details)


# --- signing (Stripe's scheme; tests, the benchmark and local tools send signed events) ----------


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header: t=<unix time>,v1=HMAC-SHA256(secret, "<t>.<payload>")."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
