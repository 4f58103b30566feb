"""The signed in-app webhook against a local receiver that verifies the signature."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.in_app import InAppWebhookSender, sign, verify
from activities.messaging import MessagingActivities
from activities.outbox import OutboxSender
from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest
from dunning.rendering import render
from dunning.store import Store

SECRET = "whsec_test"


@dataclass
class Receiver:
    received: list[dict[str, Any]] = field(default_factory=list)
    script: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        valid = verify(SECRET, headers.get("dunning-signature", ""), raw)
        self.received.append({"path": path, "headers": headers, "body": json.loads(raw), "valid": valid})
        if not valid:
            return 401, {"error": "bad signature"}, {}
        if self.script:
            return self.script.pop(0)
        return 201, {"id": f"ntf_{len(self.received)}"}, {}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    fake = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body, extra = fake.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/dunning"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/messages.db")
    store.upgrade()
    yield store
    store.dispose()


def make_request(locale: str = "en") -> MessageRequest:
    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    return MessageRequest(
        journey_id="dunning-in_1",
        step_id="notify-1",
        channel=Channel.in_app,
        template="access_restricted",
        customer=Customer(id="cus_1", name="Ada", locale=locale),
        amount=2500,
        currency="usd",
        payment_reference="in_1",
        update_url="https://pay.test/u/1",
        next_action_at=at + timedelta(days=2),
        next_action="cancel_subscription",
        at=at,
    )


def test_signature_format_and_verification() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, b'{"a":2}', now=1_700_000_100)
    assert not verify("other", header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_001_000)  # too old: a replay
    assert not verify(SECRET, "garbage", body)


def test_posts_a_signed_notification_and_keeps_it_in_the_store(receiver: Receiver, store: Store) -> None:
    request = make_request("ja")
    message = render(request)
    result = InAppWebhookSender(receiver.url, SECRET, store=store).send(request, message)
    assert result.status == "sent" and result.provider_message_id == "ntf_1"
    [hit] = receiver.received
    assert hit["valid"] and hit["path"] == "/hooks/dunning"
    assert hit["headers"]["idempotency-key"] == request.dedupe_key
    assert hit["body"]["title"] == message.subject and hit["body"]["text"] == message.text
    assert hit["body"]["customer_id"] == "cus_1" and hit["body"]["id"] == request.dedupe_key
    [row] = store.messages_for_journey("dunning-in_1")
    assert row.subject == message.subject and row.body_text == message.text and row.channel == "in_app"


def test_a_wrong_secret_is_refused_and_retryable(receiver: Receiver) -> None:
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        InAppWebhookSender(receiver.url, "wrong").send(request, render(request))
    assert raised.value.type == "ProviderError" and not raised.value.non_retryable


def test_unknown_customer_is_undeliverable(receiver: Receiver) -> None:
    receiver.script.append((410, {"error": "no such user"}, {}))
    request = make_request()
    assert InAppWebhookSender(receiver.url, SECRET).send(request, render(request)).status == "undeliverable"


def test_rate_limit_and_server_errors_raise_retryable(receiver: Receiver) -> None:
    request = make_request()
    sender = InAppWebhookSender(receiver.url, SECRET)
    receiver.script.append((429, {"error": "slow down"}, {"Retry-After": "12"}))
    with pytest.raises(ApplicationError) as raised:
        sender.send(request, render(request))
    assert raised.value.type == "ProviderThrottled" and raised.value.next_retry_delay == timedelta(seconds=12)
    receiver.script.append((502, {"error": "bad gateway"}, {}))
    with pytest.raises(ApplicationError) as raised:
        sender.send(request, render(request))
    assert not raised.value.non_retryable
    receiver.script.append((400, {"error": "schema"}, {}))
    with pytest.raises(ApplicationError) as raised:
        sender.send(request, render(request))
    assert raised.value.non_retryable


def test_exactly_once_through_the_activity(receiver: Receiver, store: Store) -> None:
    senders = {Channel.in_app: InAppWebhookSender(receiver.url, SECRET), Channel.email: OutboxSender(Channel.email, store),
               Channel.sms: OutboxSender(Channel.sms, store)}
    acts, env = MessagingActivities(senders, store), ActivityEnvironment()
    assert env.run(acts.send, make_request()).status == "sent"
    assert env.run(acts.send, make_request()).status == "sent"
    assert len(receiver.received) == 1
    [row] = store.messages_for_journey("dunning-in_1")
    assert row.status == "sent" and row.provider == "in_app_webhook" and row.provider_message_id == "ntf_1"
    assert row.subject == "Access to your account is paused"


def test_signature_timestamp_is_current(receiver: Receiver) -> None:
    request = make_request()
    InAppWebhookSender(receiver.url, SECRET).send(request, render(request))
    stamp = int(receiver.received[0]["headers"]["dunning-signature"].split(",")[0].removeprefix("t="))
    assert abs(stamp - time.time()) < 60
