"""The real SendGrid SDK against a local server that checks the v3 Mail Send contract.

The fake encodes what the OpenAPI document of `POST /v3/mail/send` requires: Bearer auth,
`personalizations[].to[].email`, `from.email`, a subject, `content[]` with text/plain first;
it answers 202 with an empty body (and X-Message-Id), or the documented `{"errors": [...]}`.
"""

from __future__ import annotations

import json
import re
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

from activities.messaging import MessagingActivities
from activities.outbox import OutboxSender
from activities.sendgrid_email import SendGridEmailSender
from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest
from dunning.rendering import read_unsubscribe_token, render
from dunning.store import Store

API_KEY = "SG.test-key"
SECRET = b"unsubscribe-secret"
PUBLIC_URL = "https://dunning.test"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeSendGrid:
    requests: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, Any] | None, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    url: str = ""

    def respond_next(self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        self.script.append((status, body, headers or {}))

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        body = json.loads(raw or b"null") if raw else None
        self.requests.append(Received(method, path, headers, body))
        if self.delay:
            time.sleep(self.delay)
        if path != "/v3/mail/send":
            return 404, {"errors": [{"message": "not found", "field": None}]}, {}
        if method != "POST":
            return 405, {"errors": [{"message": "method not allowed", "field": None}]}, {}
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return 401, {"errors": [{"message": "authorization required", "field": None}]}, {}
        if not headers.get("content-type", "").startswith("application/json"):
            return 400, {"errors": [{"message": "Content-Type should be application/json.", "field": None}]}, {}
        problems = _validate(body)
        if problems:
            return 400, {"errors": problems}, {}
        if self.script:
            return self.script.pop(0)
        return 202, None, {"X-Message-Id": f"sg-{len(self.requests)}"}


def _validate(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"message": "Bad Request", "field": None}]
    errors = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.append({"message": "The personalizations field is required.", "field": "personalizations"})
    else:
        for i, personalization in enumerate(personalizations):
            recipients = personalization.get("to")
            if not isinstance(recipients, list) or not recipients:
                errors.append({"message": "The to array is required.", "field": f"personalizations.{i}.to"})
                continue
            for j, recipient in enumerate(recipients):
                email = recipient.get("email", "")
                if not _EMAIL.match(email) or email.endswith(".invalid"):
                    errors.append({
                        "message": "Does not contain a valid address.",
                        "field": f"personalizations.{i}.to.{j}.email",
                        "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to",
                    })
    if not isinstance(body.get("from"), dict) or not _EMAIL.match(body["from"].get("email", "")):
        errors.append({"message": "The from email does not contain a valid address.", "field": "from.email"})
    if not body.get("subject") and not all(p.get("subject") for p in personalizations or []):
        errors.append({"message": "The subject is required.", "field": "subject"})
    content = body.get("content")
    if not isinstance(content, list) or not content or any(not c.get("type") or not c.get("value") for c in content):
        errors.append({"message": "The content value must be a string at least one character in length.", "field": "content"})
    elif len(content) > 1 and content[0]["type"] != "text/plain":
        errors.append({"message": "If present, text/plain must be first, followed by text/html.", "field": "content.0.type"})
    custom_args = body.get("custom_args", {})
    if any(not isinstance(v, str) for v in custom_args.values()):
        errors.append({"message": "Custom args values must be strings.", "field": "custom_args"})
    return errors


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    fake = FakeSendGrid()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = fake.handle(self.command, self.path, headers, raw)
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_GET = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/messages.db")
    store.upgrade()
    yield store
    store.dispose()


def sender_for(fake: FakeSendGrid, *, api_key: str = API_KEY, timeout: float = 5.0) -> SendGridEmailSender:
    return SendGridEmailSender(
        api_key,
        "Acme Billing <billing@acme.test>",
        host=fake.url,
        public_url=PUBLIC_URL,
        unsubscribe_secret_provider=lambda: SECRET,
        timeout=timeout,
    )


def make_request(email: str = "ada@example.com", *, journey: str = "dunning-in_1", at: datetime | None = None) -> MessageRequest:
    at = at or datetime(2026, 3, 2, 9, tzinfo=UTC)
    return MessageRequest(
        journey_id=journey,
        step_id="notify-1",
        channel=Channel.email,
        template="reminder",
        customer=Customer(id="cus_1", name="Ada Lovelace", email=email, locale="en", timezone="Europe/London"),
        amount=2500,
        currency="usd",
        payment_reference="in_1",
        update_url="https://pay.test/u/1",
        next_action_at=at + timedelta(days=2),
        next_action="retry",
        at=at,
    )


# --- the sender --------------------------------------------------------------------------------


def test_sends_text_and_html_with_unsubscribe_headers_and_the_dedupe_key(sendgrid: FakeSendGrid) -> None:
    request = make_request()
    message = render(request, brand="Acme")
    result = sender_for(sendgrid).send(request, message)
    assert result.status == "sent" and result.provider_message_id == "sg-1"

    [received] = sendgrid.requests
    assert received.method == "POST" and received.path == "/v3/mail/send"
    body = received.body
    assert body["from"] == {"email": "billing@acme.test", "name": "Acme Billing"}
    assert body["personalizations"][0]["to"] == [{"email": "ada@example.com", "name": "Ada Lovelace"}]
    assert body["subject"] == message.subject
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["content"][0]["value"] == message.text and body["content"][1]["value"] == message.html
    headers = body["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = re.fullmatch(r"<(.+)>", headers["List-Unsubscribe"]).group(1)
    assert link.startswith(f"{PUBLIC_URL}/unsubscribe/")
    assert read_unsubscribe_token(link.rsplit("/", 1)[1], SECRET) == ("cus_1", Channel.email)
    assert headers["X-Dunning-Dedupe-Key"] == request.dedupe_key
    assert body["custom_args"]["dedupe_key"] == request.dedupe_key
    assert "dunning" in body["categories"] and "reminder" in body["categories"]


def test_invalid_address_reported_by_sendgrid_is_undeliverable(sendgrid: FakeSendGrid) -> None:
    request = make_request("ada@example.invalid")
    result = sender_for(sendgrid).send(request, render(request))
    assert result.status == "undeliverable" and "valid address" in result.detail


def test_rate_limit_raises_a_retryable_error_honouring_retry_after(sendgrid: FakeSendGrid) -> None:
    sendgrid.respond_next(429, {"errors": [{"message": "too many requests", "field": None}]}, {"Retry-After": "7"})
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(sendgrid).send(request, render(request))
    assert raised.value.type == "ProviderThrottled" and not raised.value.non_retryable
    assert raised.value.next_retry_delay == timedelta(seconds=7)


def test_rate_limit_without_retry_after_uses_the_rate_limit_reset(sendgrid: FakeSendGrid) -> None:
    reset = str(int(time.time()) + 20)
    sendgrid.respond_next(429, {"errors": [{"message": "too many requests"}]}, {"X-RateLimit-Reset": reset})
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(sendgrid).send(request, render(request))
    assert timedelta(seconds=15) <= raised.value.next_retry_delay <= timedelta(seconds=20)


def test_server_errors_and_bad_credentials_are_retryable(sendgrid: FakeSendGrid) -> None:
    sendgrid.respond_next(500, {"errors": [{"message": "internal server error"}]})
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(sendgrid).send(request, render(request))
    assert raised.value.type == "ProviderError" and not raised.value.non_retryable
    with pytest.raises(ApplicationError, match="401") as raised:
        sender_for(sendgrid, api_key="SG.revoked").send(request, render(request))
    assert not raised.value.non_retryable


def test_other_bad_requests_are_permanent(sendgrid: FakeSendGrid) -> None:
    sendgrid.respond_next(400, {"errors": [{"message": "The from address does not match a verified Sender Identity.", "field": "from"}]})
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(sendgrid).send(request, render(request))
    assert raised.value.type == "MessageRejected" and raised.value.non_retryable


def test_timeouts_propagate(sendgrid: FakeSendGrid) -> None:
    sendgrid.delay = 1.0
    request = make_request()
    with pytest.raises(OSError):  # socket timeout / URLError: Temporal retries it
        sender_for(sendgrid, timeout=0.2).send(request, render(request))


# --- through the activity, with a real store -----------------------------------------------------


def activities(store: Store, fake: FakeSendGrid) -> MessagingActivities:
    senders = {Channel.email: sender_for(fake), Channel.sms: OutboxSender(Channel.sms, store), Channel.in_app: OutboxSender(Channel.in_app, store)}
    return MessagingActivities(senders, store, public_url=PUBLIC_URL, unsubscribe_secret_provider=lambda: SECRET)


def test_exactly_once_per_dedupe_key(store: Store, sendgrid: FakeSendGrid) -> None:
    acts, env = activities(store, sendgrid), ActivityEnvironment()
    first = env.run(acts.send, make_request())
    second = env.run(acts.send, make_request())
    assert len(sendgrid.requests) == 1
    assert first.status == second.status == "sent" and second.provider_message_id == "sg-1"
    [row] = store.messages_for_journey("dunning-in_1")
    assert row.status == "sent" and row.provider == "sendgrid" and row.provider_message_id == "sg-1"


def test_a_throttled_attempt_is_retried_safely(store: Store, sendgrid: FakeSendGrid) -> None:
    acts, env = activities(store, sendgrid), ActivityEnvironment()
    sendgrid.respond_next(429, {"errors": [{"message": "too many requests"}]}, {"Retry-After": "1"})
    with pytest.raises(ApplicationError):
        env.run(acts.send, make_request())
    assert store.messages_for_journey("dunning-in_1")[0].status == "claimed"
    assert env.run(acts.send, make_request()).status == "sent"
    assert env.run(acts.send, make_request()).status == "sent"
    assert len(sendgrid.requests) == 2  # the throttled one and the one that went out


def test_undeliverable_address_is_stored_and_not_resent(store: Store, sendgrid: FakeSendGrid) -> None:
    acts, env = activities(store, sendgrid), ActivityEnvironment()
    request = make_request("ada@example.invalid")
    assert env.run(acts.send, request).status == "undeliverable"
    assert env.run(acts.send, request).status == "undeliverable"
    assert len(sendgrid.requests) == 1
    assert store.messages_for_journey("dunning-in_1")[0].status == "undeliverable"


def test_opted_out_customer_gets_no_request(store: Store, sendgrid: FakeSendGrid) -> None:
    store.set_opt_out("cus_1", "email", True, source="unsubscribe_link")
    acts = activities(store, sendgrid)
    assert ActivityEnvironment().run(acts.send, make_request()).status == "opted_out"
    assert sendgrid.requests == []


def test_frequency_cap_across_journeys_stops_before_the_provider(store: Store, sendgrid: FakeSendGrid) -> None:
    acts, env = activities(store, sendgrid), ActivityEnvironment()
    t0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
    env.run(acts.send, make_request(journey="dunning-in_A", at=t0))
    env.run(acts.send, make_request(journey="dunning-in_B", at=t0 + timedelta(hours=3)))
    with pytest.raises(ApplicationError) as raised:
        env.run(acts.send, make_request(journey="dunning-in_C", at=t0 + timedelta(hours=6)))
    assert raised.value.type == "FrequencyCapped" and raised.value.details == ((t0 + timedelta(hours=24)).isoformat(),)
    assert len(sendgrid.requests) == 2
