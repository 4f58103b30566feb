"""The real Twilio SDK against a local server that checks the 2010-04-01 Messages contract.

The fake encodes the OpenAPI document of `/2010-04-01/Accounts/{AccountSid}/Messages.json`:
HTTP Basic auth with AccountSid:AuthToken, a form-encoded POST with `To` plus `From` or
`MessagingServiceSid` plus `Body`, a 201 message resource, the legacy error body
`{"code", "message", "more_info", "status"}` (e.g. 21211), and the GET list of messages.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.messaging import MessagingActivities
from activities.outbox import OutboxSender
from activities.twilio_sms import TwilioSmsSender
from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest
from dunning.rendering import render
from dunning.store import MessageRecord, Store

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "twilio-auth-token"
FROM_NUMBER = "+15005550006"
SERVICE_SID = "MG" + "b2" * 16
_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status}


@dataclass
class FakeTwilio:
    posts: list[dict[str, str]] = field(default_factory=list)
    gets: list[dict[str, list[str]]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    script: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    url: str = ""

    def respond_next(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.script.append((status, body, headers or {}))

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = urlsplit(target)
        match = _PATH.match(parts.path)
        if match is None:
            return 404, twilio_error(404, 20404, "The requested resource was not found"), {}
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
        if headers.get("authorization") != expected or match["sid"] != ACCOUNT_SID:
            return 401, twilio_error(401, 20003, "Authenticate"), {}
        if method == "GET":
            query = parse_qs(parts.query)
            self.gets.append(query)
            return 200, self._page(query), {}
        if method != "POST":
            return 405, twilio_error(405, 20004, "Method not allowed"), {}
        if headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return 400, twilio_error(400, 21000, "Unsupported content type"), {}
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        self.posts.append(form)
        if not form.get("To"):
            return 400, twilio_error(400, 21604, "A 'To' phone number is required."), {}
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return 400, twilio_error(400, 21603, "A 'From' phone number is required."), {}
        if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
            return 400, twilio_error(400, 21602, "Message body is required."), {}
        if len(form.get("Body", "")) > 1600:
            return 400, twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit."), {}
        if not _E164.match(form["To"]) or form["To"] in self.unreachable:
            return 400, twilio_error(400, 21211, f"The 'To' number {form['To']} is not a valid phone number."), {}
        if self.script:
            return self.script.pop(0)
        message = self._resource(form)
        self.messages.append(message)
        return 201, message, {}

    def _resource(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC), usegmt=False).replace("-0000", "+0000")
        return {
            "account_sid": ACCOUNT_SID, "api_version": "2010-04-01", "body": form["Body"],
            "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"), "num_media": "0", "num_segments": "1",
            "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}/Media.json"},
            "to": form["To"], "uri": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{sid}.json",
        }

    def _page(self, query: dict[str, list[str]]) -> dict[str, Any]:
        to = query.get("To", [None])[0]
        size = int(query.get("PageSize", ["50"])[0])
        found = [m for m in reversed(self.messages) if to is None or m["to"] == to][:size]
        uri = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?PageSize={size}&Page=0"
        return {"messages": found, "end": max(len(found) - 1, 0), "first_page_uri": uri, "next_page_uri": None,
                "page": 0, "page_size": size, "previous_page_uri": None, "start": 0, "uri": uri}


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, body, extra = fake.handle(self.command, self.path, headers, raw)
            payload = json.dumps(body).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_GET = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
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


def sender_for(fake: FakeTwilio, **kwargs: Any) -> TwilioSmsSender:
    options: dict[str, Any] = {"from_number": FROM_NUMBER, "api_base": fake.url} | kwargs
    return TwilioSmsSender(ACCOUNT_SID, options.pop("auth_token", AUTH_TOKEN), **options)


def make_request(phone: str = "+14155552671", *, journey: str = "dunning-in_1", country: str | None = None) -> MessageRequest:
    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    return MessageRequest(
        journey_id=journey,
        step_id="notify-1",
        channel=Channel.sms,
        template="payment_failed",
        customer=Customer(id="cus_1", name="Ada Lovelace", phone=phone, country=country, locale="en"),
        amount=2500,
        currency="usd",
        payment_reference="in_1",
        update_url="https://pay.test/u/1",
        next_action_at=at + timedelta(days=2),
        next_action="retry",
        at=at,
    )


# --- the sender --------------------------------------------------------------------------------


def test_sends_from_the_number_with_basic_auth(twilio: FakeTwilio) -> None:
    request = make_request()
    message = render(request)
    result = sender_for(twilio).send(request, message)
    assert result.status == "sent" and result.provider_message_id == twilio.messages[0]["sid"]
    assert "queued" in result.detail
    assert twilio.posts == [{"To": "+14155552671", "From": FROM_NUMBER, "Body": message.text}]


def test_sends_through_a_messaging_service_and_normalises_national_numbers(twilio: FakeTwilio) -> None:
    request = make_request("0712 345 678", country="RO")
    sender_for(twilio, from_number=None, messaging_service_sid=SERVICE_SID).send(request, render(request))
    assert twilio.posts[0]["To"] == "+40712345678" and twilio.posts[0]["MessagingServiceSid"] == SERVICE_SID
    assert "From" not in twilio.posts[0]


def test_invalid_number_error_21211_is_undeliverable(twilio: FakeTwilio) -> None:
    twilio.unreachable.add("+14155552671")
    request = make_request()
    result = sender_for(twilio).send(request, render(request))
    assert result.status == "undeliverable" and "21211" in result.detail


@pytest.mark.parametrize("code", [21614, 21612, 21408])
def test_other_unreachable_number_codes_are_undeliverable(twilio: FakeTwilio, code: int) -> None:
    twilio.respond_next(400, twilio_error(400, code, "cannot deliver"))
    request = make_request()
    assert sender_for(twilio).send(request, render(request)).status == "undeliverable"


def test_unsubscribed_recipient_21610_is_an_opt_out(twilio: FakeTwilio) -> None:
    twilio.respond_next(400, twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
    request = make_request()
    assert sender_for(twilio).send(request, render(request)).status == "opted_out"


def test_rate_limit_is_retryable_and_honours_retry_after(twilio: FakeTwilio) -> None:
    twilio.respond_next(429, twilio_error(429, 20429, "Too Many Requests"), {"Retry-After": "3"})
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(twilio).send(request, render(request))
    assert raised.value.type == "ProviderThrottled" and not raised.value.non_retryable
    assert raised.value.next_retry_delay == timedelta(seconds=3)


def test_server_errors_and_bad_credentials_are_retryable(twilio: FakeTwilio) -> None:
    twilio.respond_next(500, twilio_error(500, 20500, "Internal Server Error"))
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(twilio).send(request, render(request))
    assert raised.value.type == "ProviderError" and not raised.value.non_retryable
    with pytest.raises(ApplicationError, match="20003") as raised:
        sender_for(twilio, auth_token="wrong").send(request, render(request))
    assert not raised.value.non_retryable


def test_a_rejected_request_is_permanent(twilio: FakeTwilio) -> None:
    twilio.respond_next(400, twilio_error(400, 21606, "The 'From' phone number is not a valid, SMS-capable inbound phone number"))
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        sender_for(twilio).send(request, render(request))
    assert raised.value.type == "MessageRejected" and raised.value.non_retryable


def test_find_delivered_matches_the_same_body_to_the_same_number(twilio: FakeTwilio) -> None:
    request = make_request()
    message = render(request)
    sender = sender_for(twilio)
    assert sender.find_delivered(request, message, datetime.now(UTC)) is None
    sent = sender.send(request, message)
    found = sender.find_delivered(request, message, datetime.now(UTC) - timedelta(seconds=5))
    assert found is not None and found.provider_message_id == sent.provider_message_id
    other = render(make_request().model_copy(update={"template": "reminder"}))
    assert sender.find_delivered(request, other, datetime.now(UTC) - timedelta(seconds=5)) is None
    assert twilio.gets[0]["To"] == ["+14155552671"]


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="TWILIO_FROM_NUMBER"):
        TwilioSmsSender(ACCOUNT_SID, AUTH_TOKEN)
    with pytest.raises(ValueError, match="TWILIO_AUTH_TOKEN"):
        TwilioSmsSender(ACCOUNT_SID, "", from_number=FROM_NUMBER)


# --- through the activity, with a real store -----------------------------------------------------


def activities(store: Store, fake: FakeTwilio) -> MessagingActivities:
    senders = {Channel.sms: sender_for(fake), Channel.email: OutboxSender(Channel.email, store), Channel.in_app: OutboxSender(Channel.in_app, store)}
    return MessagingActivities(senders, store)


def test_exactly_once_per_dedupe_key(store: Store, twilio: FakeTwilio) -> None:
    acts, env = activities(store, twilio), ActivityEnvironment()
    first = env.run(acts.send, make_request())
    second = env.run(acts.send, make_request())
    assert len(twilio.posts) == 1 and first.provider_message_id == second.provider_message_id
    [row] = store.messages_for_journey("dunning-in_1")
    assert row.status == "sent" and row.provider == "twilio" and row.recipient == "+14155552671"


def test_crash_after_twilio_accepted_does_not_send_twice(store: Store, twilio: FakeTwilio) -> None:
    request = make_request()
    # An earlier attempt claimed the key and Twilio accepted the SMS, then the worker died.
    store.claim_message(MessageRecord(dedupe_key=request.dedupe_key, journey_id=request.journey_id, customer_id="cus_1",
                                      channel="sms", step_id=request.step_id, created_at=datetime.now(UTC)))
    earlier = sender_for(twilio).send(request, render(request))
    result = ActivityEnvironment().run(activities(store, twilio).send, request)
    assert result.status == "sent" and result.provider_message_id == earlier.provider_message_id
    assert len(twilio.posts) == 1
    assert store.messages_for_journey("dunning-in_1")[0].provider_message_id == earlier.provider_message_id


def test_undeliverable_number_is_recorded(store: Store, twilio: FakeTwilio) -> None:
    twilio.unreachable.add("+14155552671")
    result = ActivityEnvironment().run(activities(store, twilio).send, make_request())
    assert result.status == "undeliverable"
    assert store.messages_for_journey("dunning-in_1")[0].status == "undeliverable"


def test_5xx_raises_retryable_and_the_retry_sends_once(store: Store, twilio: FakeTwilio) -> None:
    acts, env = activities(store, twilio), ActivityEnvironment()
    twilio.respond_next(503, twilio_error(503, 20503, "Service Unavailable"))
    with pytest.raises(ApplicationError) as raised:
        env.run(acts.send, make_request())
    assert not raised.value.non_retryable
    assert env.run(acts.send, make_request()).status == "sent"
    assert len(twilio.posts) == 2 and len(twilio.messages) == 1
    assert len(twilio.gets) == 1  # the retry looked for an earlier copy before sending


def test_stop_reply_recorded_by_number_blocks_the_sms(store: Store, twilio: FakeTwilio) -> None:
    store.set_opt_out("phone:+14155552671", "sms", True, source="twilio:STOP")
    assert ActivityEnvironment().run(activities(store, twilio).send, make_request()).status == "opted_out"
    assert twilio.posts == []
