"""Helpers for the webhook, trigger CLI and ingest benchmark tests: Stripe-shaped events signed
with Stripe's scheme, and a Stripe-shaped HTTP server on loopback."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from fastapi import FastAPI
from temporalio.service import RPCError, RPCStatusCode

from dunning.api.app import create_app
from dunning.config import Settings
from dunning.stripe_events import signature_header

SECRET = "whsec_test_webhooks_0123456789"
_ids = itertools.count(1)


def event(kind: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None, **extra: Any) -> dict[str, Any]:
    """A v1 Event as Stripe sends it (snapshot payload)."""
    return {
        "id": event_id or f"evt_{int(time.time() * 1000)}_{next(_ids)}",
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created if created is not None else int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": obj, **extra},
    }


def invoice(
    invoice_id: str, customer: str, *, amount: int = 2500, status: str = "open", phone: str | None = "+14155550100",
    country: str | None = "US", **fields: Any,
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "customer_email": "ada@example.com",
        "customer_name": "Ada Lovelace",
        "customer_phone": phone,
        "customer_address": {"country": country, "city": "Chicago"} if country else None,
        "status": status,
        "amount_due": amount,
        "amount_remaining": 0 if status == "paid" else amount,
        "currency": "usd",
        "attempted": True,
        "attempt_count": 1,
        "due_date": None,
        "created": int(time.time()) - 3600,
        "status_transitions": {"finalized_at": int(time.time()) - 3500},
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": f"sub_{customer}"}},
        "lines": {"object": "list", "data": [{"id": "il_1", "pricing": {"price_details": {"price": "price_pro"}}}]},
        **fields,
    }


def intent(
    intent_id: str, customer: str | None, *, status: str = "requires_payment_method", amount: int = 4200,
    failed_method: str | None = None, phone: str | None = "+33142685300", country: str | None = "FR",
    card_country: str | None = None, **fields: Any,
) -> dict[str, Any]:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "currency": "eur",
        "customer": customer,
        "status": status,
        "receipt_email": "grace@example.com",
        "created": int(time.time()) - 600,
        "latest_charge": None,
        "last_payment_error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "advice_code": "try_again_later",
            "network_decline_code": "51",
            "network_advice_code": None,
            "charge": "ch_1",
            "payment_method": {
                "id": failed_method or f"pm_{intent_id}",
                "object": "payment_method",
                "type": "card",
                "card": {"brand": "visa", "country": card_country, "exp_month": 4, "exp_year": 2031, "fingerprint": "fpV", "funding": "debit"},
                "billing_details": {"name": "Grace Hopper", "email": None, "phone": phone, "address": {"country": country}},
            },
        }
        if status == "requires_payment_method"
        else None,
        **fields,
    }


# Cards without an issuer country unless a test asks: a worker builds that country's bank-holiday
# calendar inside the workflow sandbox, where `holidays` (gettext -> locale.normalize) is refused.
def card(pm_id: str, customer: str, *, brand: str = "mastercard", fingerprint: str | None = None, country: str | None = None) -> dict[str, Any]:
    return {
        "id": pm_id,
        "object": "payment_method",
        "type": "card",
        "customer": customer,
        "card": {"brand": brand, "country": country, "exp_month": 12, "exp_year": 2032, "fingerprint": fingerprint or f"fp_{pm_id}", "funding": "credit"},
    }


def signed_headers(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": signature_header(body, secret, timestamp), "Content-Type": "application/json"}


def signed(evt: dict[str, Any], secret: str = SECRET, *, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(evt).encode()
    return body, signed_headers(body, secret, timestamp)


async def post_event(client: httpx.AsyncClient, evt: dict[str, Any], **kwargs: Any) -> httpx.Response:
    body, headers = signed(evt, **kwargs)
    return await client.post("/webhooks/stripe", content=body, headers=headers)


# --- the HTTP service with its webhook, wired to a test harness ----------------------------------------

TOKEN = "test-token-webhooks"
# A journey compressed to seconds, messaging rules opened up (as in tests/workflows/test_dev_server.py).
FAST_POLICY = """\
name: webhook-fast
window: 40s
grace_period: 10s
timing:
  retry_hours: ["00:00", "23:59:59"]
  quiet_hours_end: "00:00"
  quiet_hours_start: "23:59:59"
  jitter: 0s
messaging: {max_per_24h: 10, max_per_7d: 20}
steps:
  - {id: notice, at: 0s, window: 2s, action: notify, channels: [email], template: payment_failed}
  - {id: retry-1, at: 3s, window: 2s, action: retry}
  - {id: retry-2, at: 10s, window: 2s, action: retry}
  - {id: retry-3, at: 20s, window: 2s, action: retry}
  - {id: hand-off, at: 40s, action: hand_off}
"""


def webhook_app(harness: Any, tmp_path: Any, client: Any, **settings: Any) -> FastAPI:
    """create_app on the harness's store, journeys on the harness's task queue, its policy active."""
    harness.store.activate_policy(harness.policy_version, activated_by="test", reason="test")
    # An answer waits for its outcome (tests assert on it) unless others are under way; 0 tests `accepted`.
    values = {
        "dunning_data_dir": tmp_path, "temporal_address": "127.0.0.1:1", "dunning_api_token": TOKEN,
        "stripe_webhook_secret": SECRET, "dunning_webhook_answer_within_ms": 60_000,
    }
    app = create_app(Settings(**{**values, **settings}), harness.store, client)
    app.state.webhooks.task_queue = harness.task_queue
    return app


def http(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": f"Bearer {TOKEN}"})


async def exists(client: Any, journey_id: str) -> bool:
    """Whether Temporal has the journey (running or ended)."""
    try:
        await client.get_workflow_handle(journey_id).describe()
    except RPCError as error:
        assert error.status == RPCStatusCode.NOT_FOUND
        return False
    return True


async def listed(client: httpx.AsyncClient, customer: str, want: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """GET /api/journeys?customer=… until it lists `want` journeys (visibility lags) or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/api/journeys", params={"customer": customer})
        assert response.status_code == 200, response.text
        journeys = response.json()["journeys"]
        if len(journeys) == want or time.monotonic() > deadline:
            return journeys
        await asyncio.sleep(0.2)


# --- a Stripe-shaped server on loopback -------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


Handler = Callable[[Seen], tuple[int, dict[str, Any]]]


class StripeStub:
    """Answers with Stripe's JSON shapes by path: objects, and lists (one page)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.seen: list[Seen] = []
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen = Seen(self.command, url.path, dict(parse_qsl(url.query, keep_blank_values=True)), {k.lower(): v for k, v in self.headers.items()})
                stub.seen.append(seen)
                route = stub.routes.get(url.path)
                if route is None:
                    status, body = 404, {"error": {"type": "invalid_request_error", "code": "resource_missing", "message": f"No such object: {url.path}"}}
                else:
                    status, body = route(seen)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Request-Id", f"req_{len(stub.seen)}")
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def object(self, path: str, body: dict[str, Any]) -> None:
        self.routes[path] = lambda seen: (200, body)

    def listing(self, path: str, items: list[dict[str, Any]] | Callable[[Seen], list[dict[str, Any]]]) -> None:
        def answer(seen: Seen) -> tuple[int, dict[str, Any]]:
            data = items(seen) if callable(items) else items
            return 200, {"object": "list", "data": data, "has_more": False, "url": path}

        self.routes[path] = answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
