"""The Stripe payment gateway (official SDK), used when STRIPE_API_KEY is set.

Retries belong to Temporal, not the SDK (max_network_retries=0): a retried activity sends the
same Idempotency-Key, so Stripe replays the first result instead of charging again.

Errors, following Stripe's error handling guide:
* card_error (HTTP 402) is a decline: a result, never an exception.
* Connection errors, 409 (concurrent request on the key), 429 and 5xx are transient: raised as
  retryable ApplicationErrors, honouring Retry-After. Except a charge's 5xx that Stripe marks
  `Stripe-Should-Retry: false`: Stripe replays it for that key, so the outcome is unknown and
  the charge is reported as `processing` for the workflow to read back later.
* invalid_request_error, idempotency_error, 401 and 403 are permanent (non-retryable), after
  checking whether the payment was paid meanwhile (then the charge reports success).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import stripe
from temporalio.exceptions import ApplicationError

from activities.payments import permanent_error
from dunning.enums import Action
from dunning.models import ChargeOutcome, Customer, Decline, FailedPayment
from dunning.ports import ChargeRequest, CollectionContext, EscalationRequest, ReconcileRequest
from dunning.stripe_events import id_of, payment_method_from, subscription_of

if TYPE_CHECKING:
    from dunning.config import Settings

logger = logging.getLogger(__name__)

TRANSIENT_PAYMENT_ERROR = "TransientPaymentError"
MAX_PAYMENT_METHODS = 100
# What restrict_access does to the subscription's next invoices: drafts can still be finalized
# and collected later, so nothing is lost if the customer pays (void would drop them).
PAUSE_BEHAVIOR = "keep_as_draft"
REQUIRES_ACTION_CODES = frozenset({"invoice_payment_intent_requires_action"})

Json = dict[str, Any]


def make_client(api_key: str, api_base: str | None = None) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=0,
    )


def _plain(value: Any) -> Any:
    """Stripe objects as plain dicts (they are not dicts themselves)."""
    if isinstance(value, stripe.StripeObject):
        return value.to_dict()
    return value


def _header(error: stripe.StripeError, name: str) -> str | None:
    for key, value in (error.headers or {}).items():
        if key.lower() == name:
            return value
    return None


def _retry_after(error: stripe.StripeError) -> timedelta | None:
    value = _header(error, "retry-after")
    if not value:
        return None
    try:
        return timedelta(seconds=max(0.0, float(value)))
    except ValueError:
        pass
    try:
        return max(timedelta(0), parsedate_to_datetime(value) - datetime.now(UTC))
    except (TypeError, ValueError):
        return None


def _describe(error: stripe.StripeError) -> str:
    body = error.json_body.get("error", {}) if isinstance(error.json_body, dict) else {}
    parts = [f"HTTP {error.http_status}" if error.http_status else type(error).__name__]
    for field in ("type", "code", "param"):
        if body.get(field):
            parts.append(f"{field}={body[field]}")
    message = body.get("message") or error.user_message or str(error)
    request_id = error.request_id or _header(error, "request-id")
    return f"{' '.join(parts)}: {message}" + (f" (request {request_id})" if request_id else "")


def _transient(error: stripe.StripeError, what: str) -> ApplicationError:
    return ApplicationError(
        f"Stripe unavailable while {what}: {_describe(error)}",
        type=TRANSIENT_PAYMENT_ERROR,
        next_retry_delay=_retry_after(error),
    )


def is_transient(error: stripe.StripeError) -> bool:
    """Worth retrying: Stripe unreachable, overloaded, or a conflicting request in flight."""
    if isinstance(error, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    status = error.http_status or 0
    return status >= 500 or status in (409, 429)


def _permanent(error: stripe.StripeError, what: str) -> ApplicationError:
    if isinstance(error, stripe.AuthenticationError):
        hint = "; check STRIPE_API_KEY"
    elif isinstance(error, stripe.PermissionError):
        hint = "; the API key lacks permission for this (restricted key?)"
    else:
        hint = ""
    return permanent_error(f"Stripe refused {what}: {_describe(error)}{hint}")


@contextmanager
def _calling(what: str) -> Iterator[None]:
    """Translate SDK errors (card errors excepted) into transient or permanent errors."""
    try:
        yield
    except stripe.CardError:
        raise
    except stripe.StripeError as error:
        if is_transient(error):
            raise _transient(error, what) from error
        raise _permanent(error, what) from error


class StripeGateway:
    name = "stripe"

    def __init__(self, client: stripe.StripeClient, *, portal_return_url: str | None = None) -> None:
        self.client = client
        self.portal_return_url = portal_return_url

    @classmethod
    def from_settings(cls, settings: Settings, *, portal_return_url: str | None = None) -> StripeGateway:
        if not settings.stripe_api_key:
            raise ValueError("STRIPE_API_KEY is not set")
        return cls(make_client(settings.stripe_api_key, settings.stripe_api_base), portal_return_url=portal_return_url)

    # -- collection context ---------------------------------------------------------------------

    def collection_context(self, payment: FailedPayment) -> CollectionContext:
        what = f"reading {payment.id}"
        update_url: str | None = None
        # Webhooks for invoices carry no decline fields: read them from the failed PaymentIntent.
        want_decline = payment.initial_decline == Decline()
        failed_intent: Json | str | None = None
        with _calling(what):
            if payment.kind == "invoice":
                params = {"expand": ["payments"]} if want_decline else None
                invoice = _plain(self.client.v1.invoices.retrieve(payment.id, params))
                customer_id = id_of(invoice.get("customer")) or payment.customer.id
                update_url = invoice.get("hosted_invoice_url")
                preferred = id_of(invoice.get("default_payment_method"))
                subscription_id = payment.subscription_id or subscription_of(invoice)
                if preferred is None and subscription_id:
                    subscription = _plain(self.client.v1.subscriptions.retrieve(subscription_id))
                    preferred = id_of(subscription.get("default_payment_method"))
                if want_decline:  # `payments` since API 2025-03-31, `payment_intent` before it
                    failed_intent = id_of(_latest_payment(invoice).get("payment_intent")) or id_of(invoice.get("payment_intent"))
            else:
                params = {"expand": ["latest_charge"]} if want_decline else None
                intent = _plain(self.client.v1.payment_intents.retrieve(payment.id, params))
                customer_id = id_of(intent.get("customer")) or payment.customer.id
                preferred = id_of(intent.get("payment_method"))
                failed_intent = intent if want_decline else None
            customer = _plain(self.client.v1.customers.retrieve(customer_id))
            customer_default = id_of((customer.get("invoice_settings") or {}).get("default_payment_method"))
            listed = self.client.v1.customers.payment_methods.list(customer_id, {"limit": MAX_PAYMENT_METHODS})
            raw = [_plain(pm) for pm in listed.data]
        default = preferred or customer_default
        methods = [payment_method_from(pm, default=pm["id"] == default) for pm in raw]
        methods.sort(key=lambda m: not m.default)  # stable: Stripe's order otherwise
        if update_url is None:
            update_url = self._portal_url(customer_id)
        return CollectionContext(
            payment_methods=tuple(methods),
            update_url=update_url,
            customer=_customer(customer, payment.customer),
            initial_decline=self._failure_decline(failed_intent) if failed_intent else None,
        )

    def _failure_decline(self, intent: Json | str) -> Decline | None:
        """The decline that opened the journey: the PaymentIntent's last error, completed from its charge.

        Best effort: a transient error is retried (raised), a refused lookup only loses the fields."""
        what = f"reading the decline of {id_of(intent)}"
        try:
            if isinstance(intent, str):
                with _calling(what):
                    intent = _plain(self.client.v1.payment_intents.retrieve(intent, {"expand": ["latest_charge"]}))
            error = intent.get("last_payment_error") or {}
            charge = intent.get("latest_charge")
            if error:
                method_id = id_of(error.get("payment_method")) or id_of(intent.get("payment_method"))
                return self._decline(error, charge or error.get("charge"), method_id)
            if isinstance(charge, Mapping) and charge.get("status") == "failed":
                reason = (charge.get("outcome") or {}).get("reason")
                fields = {"decline_code": reason, "code": charge.get("failure_code")}
                return self._decline(fields, charge, id_of(charge.get("payment_method")))
        except ApplicationError as error:
            if not error.non_retryable:
                raise
            logger.warning("%s: %s; the journey opens without decline fields", what, error)
        return None

    def _portal_url(self, customer_id: str) -> str | None:
        params: Json = {"customer": customer_id}
        if self.portal_return_url:
            params["return_url"] = self.portal_return_url
        try:
            return self.client.v1.billing_portal.sessions.create(params).url
        except stripe.InvalidRequestError as error:
            # No portal configuration in the dashboard: messages go out without a link.
            logger.warning("no Billing portal link for %s: %s", customer_id, _describe(error))
            return None

    # -- charging -------------------------------------------------------------------------------

    def charge(self, request: ChargeRequest) -> ChargeOutcome:
        method_id = request.payment_method.id
        options = {"idempotency_key": request.idempotency_key}
        what = f"charging {request.payment_reference} with {method_id} ({request.idempotency_key})"
        try:
            if request.payment_kind == "invoice":
                invoice = self.client.v1.invoices.pay(
                    request.payment_reference,
                    {"payment_method": method_id, "off_session": True, "expand": ["payments"]},
                    options,
                )
                return self._invoice_outcome(_plain(invoice), method_id)
            intent = self.client.v1.payment_intents.confirm(
                request.payment_reference,
                {"payment_method": method_id, "off_session": True, "expand": ["latest_charge"]},
                options,
            )
            return self._intent_outcome(_plain(intent), method_id)
        except stripe.CardError as error:
            return self._card_error_outcome(error, method_id)
        except stripe.StripeError as error:
            status = error.http_status or 0
            if status >= 500 and _header(error, "stripe-should-retry") == "false":
                # Stripe stored this 500 under the key and would replay it: read back instead.
                return ChargeOutcome(
                    status="processing",
                    message=f"outcome unknown ({_describe(error)}); to be read back",
                )
            if is_transient(error):
                raise _transient(error, what) from error
            if isinstance(error, stripe.InvalidRequestError):
                paid = self._paid_meanwhile(request.payment_reference, request.payment_kind)
                if paid is not None:
                    return paid
            raise _permanent(error, what) from error

    def _paid_meanwhile(self, reference: str, kind: str) -> ChargeOutcome | None:
        """A refused charge on a payment that is already paid (out of band, or by Stripe)."""
        try:
            outcome = self._read(reference, kind)
        except (stripe.StripeError, ApplicationError):
            return None
        if outcome.status != "succeeded":
            return None
        return outcome.model_copy(update={"message": "already paid"})

    def _card_error_outcome(self, error: stripe.CardError, method_id: str) -> ChargeOutcome:
        body: Json = (error.json_body or {}).get("error", {}) if isinstance(error.json_body, dict) else {}
        intent = body.get("payment_intent") if isinstance(body.get("payment_intent"), Mapping) else {}
        charge_id = body.get("charge") or id_of(intent.get("latest_charge"))
        if intent.get("status") == "requires_action" or body.get("code") in REQUIRES_ACTION_CODES:
            return ChargeOutcome(
                status="requires_action",
                charge_id=charge_id,
                payment_intent_id=intent.get("id"),
                message=body.get("message"),
            )
        decline = self._decline(body, charge_id, id_of(body.get("payment_method")) or method_id)
        return ChargeOutcome(
            status="declined",
            decline=decline,
            charge_id=charge_id,
            payment_intent_id=intent.get("id"),
            message=body.get("message"),
        )

    def _decline(self, error: Mapping[str, Any], charge: Any, method_id: str | None) -> Decline:
        """Decline fields from an error object, completed from the charge's `outcome`."""
        code = error.get("code")
        fields = {
            "decline_code": error.get("decline_code") or (code if code and code != "card_declined" else None),
            "advice_code": error.get("advice_code"),
            "network_decline_code": error.get("network_decline_code"),
            "network_advice_code": error.get("network_advice_code"),
        }
        outcome_fields = ("advice_code", "network_decline_code", "network_advice_code")
        if any(fields[f] is None for f in outcome_fields) and charge is not None:
            charge_obj = charge if isinstance(charge, Mapping) else None
            if charge_obj is None:
                with _calling(f"reading charge {charge}"):
                    charge_obj = _plain(self.client.v1.charges.retrieve(charge))
            outcome = charge_obj.get("outcome") or {}
            for field in outcome_fields:
                fields[field] = fields[field] or outcome.get(field)
            method_id = method_id or charge_obj.get("payment_method")
        return Decline(payment_method=method_id, **fields)

    def _intent_outcome(self, intent: Json, method_id: str | None) -> ChargeOutcome:
        status = intent.get("status")
        latest = intent.get("latest_charge")
        common: Json = {"charge_id": id_of(latest), "payment_intent_id": intent.get("id")}
        method_id = id_of(intent.get("payment_method")) or method_id
        if status == "succeeded":
            return ChargeOutcome(status="succeeded", **common)
        if status == "processing":
            return ChargeOutcome(status="processing", **common)
        if status == "requires_capture":
            # Authorized only: not collected until captured, so keep reading it back.
            return ChargeOutcome(status="processing", message="authorized, awaiting capture", **common)
        if status == "requires_action":
            return ChargeOutcome(status="requires_action", message="the customer must authenticate", **common)
        error = intent.get("last_payment_error") or {}
        if status == "requires_payment_method" and error:
            method_id = id_of(error.get("payment_method")) or method_id
            decline = self._decline(error, latest or error.get("charge"), method_id)
            return ChargeOutcome(status="declined", decline=decline, message=error.get("message"), **common)
        # canceled, or never attempted (requires_confirmation, no error): nothing was collected
        return ChargeOutcome(
            status="declined",
            decline=Decline(payment_method=method_id),
            message=f"payment intent is {status}",
            **common,
        )

    def _invoice_outcome(self, invoice: Json, method_id: str | None) -> ChargeOutcome:
        payment = _latest_payment(invoice)
        intent_id = id_of(payment.get("payment_intent"))
        if invoice.get("status") == "paid":
            return ChargeOutcome(status="succeeded", charge_id=id_of(payment.get("charge")), payment_intent_id=intent_id)
        if intent_id is None:
            return ChargeOutcome(
                status="declined",
                decline=Decline(payment_method=method_id),
                message=f"invoice is {invoice.get('status')} with no payment attempt",
            )
        with _calling(f"reading {intent_id}"):
            intent = _plain(self.client.v1.payment_intents.retrieve(intent_id, {"expand": ["latest_charge"]}))
        return self._intent_outcome(intent, method_id)

    # -- reading back ---------------------------------------------------------------------------

    def read_back(self, request: ReconcileRequest) -> ChargeOutcome:
        """The payment's current state (Stripe keeps no per-attempt lookup by idempotency key)."""
        with _calling(f"reading back {request.payment_reference}"):
            return self._read(request.payment_reference, request.payment_kind)

    def _read(self, reference: str, kind: str) -> ChargeOutcome:
        if kind == "invoice":
            invoice = _plain(self.client.v1.invoices.retrieve(reference, {"expand": ["payments"]}))
            return self._invoice_outcome(invoice, None)
        intent = _plain(self.client.v1.payment_intents.retrieve(reference, {"expand": ["latest_charge"]}))
        return self._intent_outcome(intent, None)

    # -- escalations ----------------------------------------------------------------------------

    def escalate(self, request: EscalationRequest) -> None:
        action = request.action
        options = {"idempotency_key": f"{request.journey_id}:escalate:{action.value}"}
        what = f"{action.value} for {request.payment_reference}"
        if action in (Action.hand_off, Action.write_off):
            if request.payment_kind == "invoice":
                self._call(
                    what,
                    lambda: self.client.v1.invoices.mark_uncollectible(request.payment_reference, None, options),
                    done=lambda: self._invoice_status(request.payment_reference) in ("paid", "uncollectible", "void"),
                )
            elif action is Action.write_off:
                self._call(
                    what,
                    lambda: self.client.v1.payment_intents.cancel(
                        request.payment_reference, {"cancellation_reason": "abandoned"}, options
                    ),
                    done=lambda: self._intent_status(request.payment_reference) in ("succeeded", "canceled"),
                )
            else:  # a PaymentIntent has no "uncollectible" state; the partner collects elsewhere
                logger.info("%s: nothing to change in Stripe for a PaymentIntent", what)
            return
        if action not in (Action.cancel_subscription, Action.restrict_access, Action.reactivate, Action.incentive):
            raise permanent_error(f"{action.value} is not an escalation")
        subscription_id = request.subscription_id or self._subscription_for(request)
        if subscription_id is None:
            logger.warning("%s: no subscription to act on; nothing changed in Stripe", what)
            return
        subscriptions = self.client.v1.subscriptions
        if action is Action.cancel_subscription:
            self._call(
                what,
                lambda: subscriptions.cancel(subscription_id, None, options),
                done=lambda: self._subscription_status(subscription_id) == "canceled",
            )
        elif action is Action.restrict_access:
            self._call(
                what,
                lambda: subscriptions.update(
                    subscription_id, {"pause_collection": {"behavior": PAUSE_BEHAVIOR}}, options
                ),
            )
        elif action is Action.reactivate:
            # An empty string unsets pause_collection: collection resumes.
            self._call(what, lambda: subscriptions.update(subscription_id, {"pause_collection": ""}, options))
        else:
            if not request.coupon:
                raise permanent_error(f"{what}: the incentive step names no coupon")
            self._call(
                what,
                lambda: subscriptions.update(subscription_id, {"discounts": [{"coupon": request.coupon}]}, options),
            )

    def _call(self, what: str, call: Callable[[], Any], done: Callable[[], bool] | None = None) -> None:
        try:
            with _calling(what):
                call()
        except ApplicationError as error:
            cause = error.__cause__
            # Refused because the object is already in (or past) the wanted state: nothing to do.
            if error.non_retryable and isinstance(cause, stripe.InvalidRequestError) and done is not None:
                with _calling(what):
                    if done():
                        logger.info("%s: already done (%s)", what, _describe(cause))
                        return
            raise

    def _subscription_for(self, request: EscalationRequest) -> str | None:
        if request.payment_kind != "invoice":
            return None
        with _calling(f"reading {request.payment_reference}"):
            return subscription_of(_plain(self.client.v1.invoices.retrieve(request.payment_reference)))

    def _invoice_status(self, invoice_id: str) -> str | None:
        return _plain(self.client.v1.invoices.retrieve(invoice_id)).get("status")

    def _intent_status(self, intent_id: str) -> str | None:
        return _plain(self.client.v1.payment_intents.retrieve(intent_id)).get("status")

    def _subscription_status(self, subscription_id: str) -> str | None:
        return _plain(self.client.v1.subscriptions.retrieve(subscription_id)).get("status")


def _customer(customer: Json, known: Customer) -> Customer | None:
    """Contact details from the Stripe customer (current), falling back to what the event carried."""
    if not customer or customer.get("deleted"):
        return None
    address = customer.get("address") or {}
    locales = customer.get("preferred_locales") or []
    return known.model_copy(
        update={
            "name": customer.get("name") or known.name,
            "email": customer.get("email") or known.email,
            "phone": customer.get("phone") or known.phone,
            "country": address.get("country") or known.country,
            "locale": locales[0] if locales else known.locale,
        }
    )


def _latest_payment(invoice: Json) -> Json:
    payments = (invoice.get("payments") or {}).get("data") or []
    if not payments:
        return {}
    latest = max(payments, key=lambda p: p.get("created") or 0)
    return latest.get("payment") or {}
