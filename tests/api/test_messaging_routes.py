"""Twilio inbound webhook (STOP/START) and the one-click unsubscribe endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from temporalio.testing import ActivityEnvironment
from twilio.request_validator import RequestValidator

from activities.messaging import MessagingActivities, phone_opt_out_key
from activities.outbox import OutboxSender
from dunning.api.messaging_routes import build_router, keyword_of
from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest
from dunning.rendering import unsubscribe_secret, unsubscribe_token
from dunning.store import Store

AUTH_TOKEN = "twilio-auth-token"
PUBLIC_URL = "https://dunning.test"
SECRET = "unsubscribe-secret"
PHONE = "+14155552671"
ENV = {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DUNNING_PUBLIC_URL": PUBLIC_URL, "DUNNING_UNSUBSCRIBE_SECRET": SECRET}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/messages.db")
    store.upgrade()
    yield store
    store.dispose()


def client_for(store: Store, env: dict[str, str] = ENV) -> TestClient:
    app = FastAPI()
    app.include_router(build_router(lambda: store, env=env))
    return TestClient(app)


def inbound(body: str, sid: str = "SM" + "1" * 32, **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "a" * 32, "From": PHONE, "To": "+15005550006", "Body": body, **extra}


def post_signed(client: TestClient, params: dict[str, str], *, url: str = f"{PUBLIC_URL}/webhooks/twilio", token: str = AUTH_TOKEN, **headers: str):
    signature = RequestValidator(token).compute_signature(url, params)
    return client.post("/webhooks/twilio", data=params, headers={"X-Twilio-Signature": signature, **headers})


# --- Twilio inbound --------------------------------------------------------------------------------


def test_stop_with_a_valid_signature_opts_the_number_out(store: Store) -> None:
    response = post_signed(client_for(store), inbound("Stop"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    assert "<Response" in response.text and "<Message" not in response.text  # empty TwiML
    assert store.opted_out_channels(phone_opt_out_key(PHONE)) == {"sms"}
    assert store.webhook_event_counts()["processed"] == 1


def test_start_opts_back_in_and_help_changes_nothing(store: Store) -> None:
    client = client_for(store)
    post_signed(client, inbound("STOP", sid="SM" + "1" * 32))
    post_signed(client, inbound("help", sid="SM" + "2" * 32))
    assert store.opted_out_channels(phone_opt_out_key(PHONE)) == {"sms"}
    post_signed(client, inbound(" start ", sid="SM" + "3" * 32))
    assert store.opted_out_channels(phone_opt_out_key(PHONE)) == set()
    counts = store.webhook_event_counts()
    assert counts["processed"] == 2 and counts["ignored"] == 1


def test_a_retried_webhook_is_applied_once(store: Store) -> None:
    client = client_for(store)
    post_signed(client, inbound("STOP"))
    post_signed(client, inbound("START", sid="SM" + "9" * 32))
    assert post_signed(client, inbound("STOP")).status_code == 200  # Twilio redelivers the first one
    assert store.opted_out_channels(phone_opt_out_key(PHONE)) == set()


def test_bad_signature_is_refused(store: Store) -> None:
    client = client_for(store)
    assert post_signed(client, inbound("STOP"), token="not-the-token").status_code == 403
    tampered = client.post("/webhooks/twilio", data=inbound("STOP"), headers={"X-Twilio-Signature": "AAAA"})
    assert tampered.status_code == 403
    assert client.post("/webhooks/twilio", data=inbound("STOP")).status_code == 403
    assert store.opted_out_channels(phone_opt_out_key(PHONE)) == set()
    assert store.webhook_event_counts()["received"] == 0


def test_signature_over_the_wrong_url_is_refused(store: Store) -> None:
    response = post_signed(client_for(store), inbound("STOP"), url="https://elsewhere.test/webhooks/twilio")
    assert response.status_code == 403


def test_without_a_public_url_the_request_url_is_signed(store: Store) -> None:
    client = client_for(store, {"TWILIO_AUTH_TOKEN": AUTH_TOKEN, "DUNNING_UNSUBSCRIBE_SECRET": SECRET})
    assert post_signed(client, inbound("STOP"), url="http://testserver/webhooks/twilio").status_code == 200


def test_sha256_signatures_from_shared_keys(store: Store) -> None:
    params = inbound("STOP")
    signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC_URL}/webhooks/twilio", params, "HMAC_SHA256")
    response = client_for(store).post("/webhooks/twilio", data=params, headers={
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    })
    assert response.status_code == 200


def test_advanced_opt_out_type_is_used(store: Store) -> None:
    post_signed(client_for(store), inbound("ARRET", OptOutType="STOP"))
    assert store.opted_out_channels(phone_opt_out_key(PHONE)) == {"sms"}


def test_unconfigured_webhook_says_why(store: Store) -> None:
    response = client_for(store, {"DUNNING_UNSUBSCRIBE_SECRET": SECRET}).post("/webhooks/twilio", data=inbound("STOP"))
    assert response.status_code == 503 and "TWILIO_AUTH_TOKEN" in response.text


def test_keywords() -> None:
    assert keyword_of("stop") == "STOP"
    assert keyword_of("  Opt out! ") == "OPT OUT"
    assert keyword_of("opt-out") == "OPTOUT"
    assert keyword_of("please stop texting me") is None
    assert keyword_of(None) is None


def test_a_stop_reply_blocks_the_next_sms(store: Store) -> None:
    post_signed(client_for(store), inbound("STOP"))
    request = MessageRequest(
        journey_id="dunning-in_1", step_id="notify-1", channel=Channel.sms, template="reminder",
        customer=Customer(id="cus_1", phone="+1 415 555 2671"), amount=1000, currency="usd",
        payment_reference="in_1", at=datetime(2026, 3, 2, 9, tzinfo=UTC),
    )
    activities = MessagingActivities({c: OutboxSender(c, store) for c in Channel}, store)
    assert ActivityEnvironment().run(activities.send, request).status == "opted_out"


# --- unsubscribe -------------------------------------------------------------------------------------


def test_unsubscribe_page_confirms_before_acting(store: Store) -> None:
    token = unsubscribe_token("cus_1", Channel.email, SECRET.encode())
    response = client_for(store).get(f"/unsubscribe/{token}")
    assert response.status_code == 200 and '<form method="post">' in response.text
    assert store.opted_out_channels("cus_1") == set()  # link scanners must not unsubscribe anyone


def test_one_click_post_unsubscribes(store: Store) -> None:
    token = unsubscribe_token("cus_1", Channel.email, SECRET.encode())
    response = client_for(store).post(
        f"/unsubscribe/{token}", content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and "unsubscribed" in response.text
    assert store.opted_out_channels("cus_1") == {"email"}
    assert [e.action for e in store.audit_entries("cus_1")] == ["opt_out"]


@pytest.mark.parametrize("token", ["garbage", "u1.Y3VzXzE6ZW1haWw.AAAA", unsubscribe_token("cus_1", Channel.email, b"another-secret")])
def test_invalid_tokens_get_a_clear_400(store: Store, token: str) -> None:
    client = client_for(store)
    for response in (client.get(f"/unsubscribe/{token}"), client.post(f"/unsubscribe/{token}")):
        assert response.status_code == 400
        assert "unsubscribe link is not valid" in response.json()["detail"]
    assert store.opted_out_channels("cus_1") == set()


def test_secret_derived_from_the_api_token_when_not_set(store: Store, tmp_path: Path) -> None:
    env = {"DUNNING_API_TOKEN": "api-token", "DUNNING_DATA_DIR": str(tmp_path)}
    derived = unsubscribe_secret(env)
    assert derived != b"api-token" and derived == unsubscribe_secret(env)
    token = unsubscribe_token("cus_2", Channel.sms, derived)
    assert client_for(store, env).post(f"/unsubscribe/{token}").status_code == 200
    assert store.opted_out_channels("cus_2") == {"sms"}
