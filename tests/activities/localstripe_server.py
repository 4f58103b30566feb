"""localstripe (PyPI, a stateful fake Stripe) for tests: the launcher and its process handling.

The launcher (this file run as a script) serves localstripe on 127.0.0.1 only, on a port it
picks itself and prints, with its /tmp/localstripe.pickle persistence switched off, after
filling in documented Stripe API behaviour that localstripe 1.15.10 lacks and the engine uses:

* `POST /v1/payment_intents/{id}/confirm` with `payment_method` and `off_session`
  (https://docs.stripe.com/api/payment_intents/confirm);
* card errors shaped as Stripe documents them (https://docs.stripe.com/api/errors): type
  `card_error`, `decline_code`, the `payment_method`, and the PaymentIntent in the error and in
  its `last_payment_error`;
* `Idempotency-Key` (https://docs.stripe.com/api/idempotent_requests), and events that name the
  request and key that caused them (`request.id`, `request.idempotency_key`,
  https://docs.stripe.com/api/events/object);
* `GET /v1/customers/{id}/payment_methods` (https://docs.stripe.com/api/payment_methods/customer_list);
* unrecognized URLs answered with Stripe's JSON error (404 `invalid_request_error`) instead of
  aiohttp's plain-text page, so an endpoint localstripe lacks reads as Stripe's refusal.

Every extension follows the documented semantics for any input; none knows about the engine.
The test side starts the launcher with `run_localstripe()` and always stops it.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

API_KEY = "sk_test_localstripe"
FAILING_CARD = "4000000000000341"  # attaches, then every charge is declined (Stripe's test card)
WORKING_CARD = "4242424242424242"

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
REQUEST_TIMEOUT = 10.0


# --- the test side -------------------------------------------------------------------------------


@dataclass
class LocalStripe:
    url: str
    log_path: Path

    def client(self):
        from activities.stripe_gateway import make_client

        return make_client(API_KEY, self.url)

    def log(self) -> str:
        """localstripe's access log and errors (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def deliver_webhooks(self, name: str, url: str, secret: str, events: list[str]) -> None:
        """localstripe's own webhook delivery: events signed with `secret`, POSTed to `url`."""
        import httpx

        with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT) as http:  # loopback, never a proxy
            response = http.post(f"{self.url}/_config/webhooks/{name}", json={"url": url, "secret": secret, "events": events})
        response.raise_for_status()


@contextmanager
def run_localstripe(log_path: Path) -> Iterator[LocalStripe]:
    """localstripe in a subprocess for the duration of the block; always terminated."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        port = _read_port(process, log_path)
        yield LocalStripe(url=f"http://127.0.0.1:{port}", log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def _read_port(process: subprocess.Popen, log_path: Path) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(timeout=min(left, 0.5)):
                line = process.stdout.readline().decode().strip()
                if line.startswith("listening "):
                    return int(line.split()[1])
                if not line and process.poll() is not None:
                    break
            elif process.poll() is not None:
                break
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"localstripe did not start within {START_TIMEOUT}s (exit {process.poll()}): {tail}")


# --- the launcher (runs in the localstripe process) ------------------------------------------------


def _extend_localstripe():
    """Patch localstripe's resources before its server module builds the routes from them.

    Returns the context variables the request middleware sets: (request id, idempotency key)."""
    import contextvars

    from localstripe import resources
    from localstripe.errors import UserError
    from localstripe.resources import (
        Charge,
        Customer,
        Event,
        List,
        PaymentIntent,
        PaymentMethod,
        store,
        try_convert_to_bool,
    )

    # Runs must never share state: no /tmp/localstripe.pickle.
    resources.Store.dump_to_disk = lambda self: None

    class CardError(UserError):
        """https://docs.stripe.com/api/errors: declines are HTTP 402 errors of type `card_error`."""

        def __init__(self, message: str, contents: dict) -> None:
            super().__init__(402, message, contents)
            self.body["error"]["type"] = "card_error"

    def decline_fields(charge) -> dict:
        """The error fields of a failed charge (https://docs.stripe.com/api/errors#errors-decline_code).

        localstripe models one kind of decline, `card_declined` without a reason; Stripe reports
        that as decline_code `generic_decline` (https://docs.stripe.com/declines/codes)."""
        return {
            "type": "card_error",
            "code": charge.failure_code,
            "decline_code": "generic_decline" if charge.failure_code == "card_declined" else None,
            "message": charge.failure_message,
            "charge": charge.id,
            "payment_method": PaymentMethod._api_retrieve(charge.payment_method)._export(),
        }

    def raise_failure(self) -> None:
        fields = decline_fields(self)
        raise CardError(fields.pop("message"), fields)

    Charge._raise_failure = raise_failure

    original_report_failure = PaymentIntent._report_failure

    def report_failure(self) -> None:
        # The error of a declined PaymentIntent carries the PaymentIntent (`error.payment_intent`).
        try:
            original_report_failure(self)
        except UserError as error:
            if error.code == 402:
                error.body["error"]["payment_intent"] = self._export()
            raise

    PaymentIntent._report_failure = report_failure

    original_last_payment_error = PaymentIntent.last_payment_error

    def last_payment_error(self):
        # `last_payment_error` is the error object of the last attempt: a decline's card_error
        # with decline_code and the PaymentMethod it was made with.
        error = original_last_payment_error.fget(self)
        if error and error.get("charge") and self.latest_charge is not None:
            return decline_fields(self.latest_charge)
        return error

    PaymentIntent.last_payment_error = property(last_payment_error)

    @classmethod
    def confirm(cls, id, payment_method=None, off_session=None, **kwargs):
        """https://docs.stripe.com/api/payment_intents/confirm

        `payment_method`: the PaymentMethod to attempt this payment with; a PaymentIntent whose
        last attempt failed (requires_payment_method) is confirmed again with it. A PaymentIntent
        with a customer only accepts that customer's methods. `off_session`: the customer is not
        present to authenticate; Stripe then declines a payment that needs authentication
        (authentication_required), which this emulator does not model: it refuses (500) rather
        than start a 3-D Secure flow Stripe would not start.
        """
        if kwargs:
            raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
        off_session = try_convert_to_bool(off_session)
        if not (isinstance(id, str) and id.startswith("pi_")):
            raise UserError(400, "Bad request")
        if payment_method is not None and not (isinstance(payment_method, str) and payment_method.startswith("pm_")):
            raise UserError(400, f"Invalid payment_method: {payment_method!r}", {"param": "payment_method"})
        if off_session is not None and not isinstance(off_session, bool):
            raise UserError(400, "Invalid boolean: off_session", {"param": "off_session"})

        intent = cls._api_retrieve(id)
        allowed = ("requires_payment_method", "requires_confirmation") if payment_method else ("requires_confirmation",)
        if intent.status not in allowed:
            raise UserError(
                400,
                f"You cannot confirm this PaymentIntent because it has a status of {intent.status}.",
                {"code": "payment_intent_unexpected_state"},
            )
        method = PaymentMethod._api_retrieve(payment_method or intent.payment_method)
        if intent.customer and method.customer != intent.customer:
            raise UserError(
                400,
                f"The PaymentMethod {method.id} does not belong to the Customer {intent.customer}.",
                {"param": "payment_method"},
            )
        if off_session and method._requires_authentication():
            raise UserError(500, "Not implemented: an off-session payment that requires authentication")

        if payment_method is not None:
            # A new attempt: the earlier charge stays in the charges list, no longer the latest.
            intent.payment_method = method.id
            intent.latest_charge = None
            intent._authentication_failed = False
        intent._confirm(on_failure_now=intent._report_failure)
        return intent

    PaymentIntent._api_confirm = confirm

    def list_customer_payment_methods(id, type=None, limit=None, starting_after=None, **kwargs):
        """https://docs.stripe.com/api/payment_methods/customer_list: newest first."""
        if kwargs:
            raise UserError(400, "Received unknown parameter: " + ", ".join(kwargs))
        Customer._api_retrieve(id)  # 404 for an unknown customer
        listed = List(f"/v1/customers/{id}/payment_methods", limit=limit, starting_after=starting_after)
        attached = [
            pm
            for key, pm in store.items()
            if key.startswith("payment_method:") and pm.customer == id and (type is None or pm.type == type)
        ]
        listed._list = attached[::-1]  # the store keeps creation order
        return listed

    # Routes are built from extra_apis when localstripe.server is imported: swap the handlers in.
    routes = {(method, url): index for index, (method, url, _) in enumerate(resources.extra_apis)}
    confirm_url = ("POST", "/v1/payment_intents/{id}/confirm")
    resources.extra_apis[routes[confirm_url]] = (*confirm_url, PaymentIntent._api_confirm)
    resources.extra_apis.append(("GET", "/v1/customers/{id}/payment_methods", list_customer_payment_methods))

    # Events name the API request that caused them and its idempotency key.
    request_id = contextvars.ContextVar("request_id", default=None)
    request_key = contextvars.ContextVar("idempotency_key", default=None)
    original_event_init = Event.__init__

    def event_init(self, type, data):
        original_event_init(self, type, data)
        self.request = {"id": request_id.get(), "idempotency_key": request_key.get()}

    Event.__init__ = event_init
    return request_id, request_key


def _request_middleware(request_id, request_key):
    """Stripe's request handling that localstripe lacks: request ids, idempotency, unknown URLs."""
    from aiohttp import web
    from localstripe.errors import UserError
    from localstripe.resources import random_id
    from localstripe.server import get_api_key, get_post_data
    saved: dict[tuple[str | None, str], tuple[str, int, bytes, str]] = {}
    in_flight: set[tuple[str | None, str]] = set()

    def error(status: int, kind: str, message: str) -> web.Response:
        return web.json_response({"error": {"type": kind, "message": message}}, status=status)

    @web.middleware
    async def middleware(request, handler):
        if request.match_info.http_exception is not None:
            # Stripe answers an endpoint it does not have with a JSON invalid_request_error.
            return error(404, "invalid_request_error", f"Unrecognized request URL ({request.method}: {request.path}).")
        key = request.headers.get("Idempotency-Key")
        rid = "req_" + random_id(14)
        if request.method != "POST" or not key or not request.path.startswith("/v1/"):
            token = request_id.set(rid)
            try:
                response = await handler(request)
            finally:
                request_id.reset(token)
            response.headers["Request-Id"] = rid
            return response

        # https://docs.stripe.com/api/idempotent_requests: the first result for a key (per account)
        # is saved, status code and body, success or failure, and replayed for a repeat of the
        # request; a repeat with other parameters is an idempotency_error; a repeat while the
        # first is executing is a 409. Nothing is saved when the request failed validation (not
        # executed): localstripe's 4xx other than a 402 decline.
        scope = (get_api_key(request), key)
        params = await get_post_data(request)
        fingerprint = json.dumps([request.path, params], sort_keys=True, default=str)
        if scope in in_flight:
            return error(409, "idempotency_error", f"There is currently another in-progress request using this Idempotent Key: {key}.")
        if scope in saved:
            first, status, body, content_type = saved[scope]
            if first != fingerprint:
                return error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                )
            return web.Response(
                status=status, body=body, content_type=content_type,
                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key, "Request-Id": rid},
            )
        in_flight.add(scope)
        tokens = (request_id.set(rid), request_key.set(key))
        try:
            try:
                response = await handler(request)
            except UserError as failure:
                response = failure.to_response()
        finally:
            request_id.reset(tokens[0])
            request_key.reset(tokens[1])
            in_flight.discard(scope)
        if response.status < 400 or response.status == 402 or response.status >= 500:
            saved[scope] = (fingerprint, response.status, response.body, response.content_type)
        response.headers["Idempotency-Key"] = key
        response.headers["Request-Id"] = rid
        return response

    return middleware


def _serve() -> None:
    import logging
    import socket

    from aiohttp import web

    context = _extend_localstripe()
    from localstripe.server import app  # builds the routes from the patched resources

    # After localstripe's error and auth middlewares, before the handlers.
    app.middlewares.insert(2, _request_middleware(*context))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # loopback only, a free port
    print(f"listening {sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=logging.getLogger("aiohttp.access"))


if __name__ == "__main__":
    _serve()
