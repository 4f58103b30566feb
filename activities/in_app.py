"""In-app notifications: a signed JSON webhook to the product, plus the stored messages row.

The product receives `POST DUNNING_INAPP_WEBHOOK_URL` with
`Dunning-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` keyed with
DUNNING_INAPP_WEBHOOK_SECRET, and `Idempotency-Key: <dedupe key>`: a retry after a lost
response repeats the same key, so the receiver can drop the duplicate. The notification's
title and text also stay in the store's messages row (subject / body_text).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from activities.messaging import message_record, parse_retry_after, provider_error, rejected, throttled
from dunning.enums import Channel
from dunning.ports import MessageRequest, MessageResult, RenderedMessage
from dunning.store import Store

SIGNATURE_HEADER = "Dunning-Signature"
DEFAULT_TOLERANCE = 300  # seconds a receiver should accept between signing and receipt
# The product does not know this customer (any more): fall back to another channel.
_UNKNOWN_RECIPIENT = {404, 410, 422}


def sign(secret: str | bytes, body: bytes, timestamp: int) -> str:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str | bytes, header: str, body: bytes, *, now: int | None = None, tolerance: int = DEFAULT_TOLERANCE) -> bool:
    """What a receiver does: check the HMAC (any v1 entry) and that the timestamp is fresh."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else int(time.time())) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


class InAppWebhookSender:
    channel = Channel.in_app
    name = "in_app_webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        store: Store | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the in-app webhook needs DUNNING_INAPP_WEBHOOK_SECRET to sign its requests")
        self.url = url
        self.secret = secret
        self.store = store
        self.client = client or httpx.Client(timeout=timeout)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, store: Store | None = None) -> InAppWebhookSender:
        return cls(env["DUNNING_INAPP_WEBHOOK_URL"], env.get("DUNNING_INAPP_WEBHOOK_SECRET", ""), store=store)

    def payload(self, request: MessageRequest, message: RenderedMessage) -> dict[str, Any]:
        return {
            "id": request.dedupe_key,
            "type": "dunning.notification",
            "customer_id": request.customer.id,
            "journey_id": request.journey_id,
            "step_id": request.step_id,
            "template": request.template,
            "locale": request.customer.locale,
            "title": message.subject,
            "text": message.text,
            "update_url": request.update_url,
            "payment_reference": request.payment_reference,
            "created_at": request.at.isoformat(),
        }

    def send(self, request: MessageRequest, message: RenderedMessage) -> MessageResult:
        if self.store is not None:
            # Idempotent: the messaging activity normally claimed this row (with the same body).
            self.store.claim_message(message_record(request, message, recipient=request.customer.id))
        body = json.dumps(self.payload(request, message), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "Idempotency-Key": request.dedupe_key,
        }
        response = self.client.post(self.url, content=body, headers=headers)
        status = response.status_code
        if 200 <= status < 300:
            return MessageResult(status="sent", detail=f"delivered to the in-app webhook ({status})", provider_message_id=_reference(response) or request.dedupe_key)
        detail = f"HTTP {status}: {response.text[:300]}"
        if status in _UNKNOWN_RECIPIENT:
            return MessageResult(status="undeliverable", detail=f"the in-app webhook does not know this customer ({detail})")
        if status == 429:
            raise throttled("in-app webhook", detail, parse_retry_after(response.headers.get("Retry-After")))
        if status >= 500 or status in (401, 403, 408):
            raise provider_error("in-app webhook", detail)
        raise rejected("in-app webhook", detail)


def _reference(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return str(value) if value else None
