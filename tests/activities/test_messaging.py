"""The messaging activity on a real SQLite store: claims, opt-outs, caps, failures, wiring."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.in_app import InAppWebhookSender
from activities.messaging import (
    MessagingActivities,
    build_senders,
    normalize_phone,
    parse_retry_after,
    phone_opt_out_key,
)
from activities.outbox import OutboxSender
from activities.sendgrid_email import SendGridEmailSender
from activities.twilio_sms import TwilioSmsSender
from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest, MessageResult, RenderedMessage
from dunning.rendering import read_unsubscribe_token
from dunning.store import MessageRecord, Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/messages.db")
    store.upgrade()
    yield store
    store.dispose()


class RecordingSender:
    """A provider double: records calls, answers with a scripted result or error."""

    name = "recording"

    def __init__(self, channel: Channel, *, result: MessageResult | None = None, error: Exception | None = None) -> None:
        self.channel = channel
        self.result = result
        self.error = error
        self.calls: list[tuple[MessageRequest, RenderedMessage]] = []
        self.lookups = 0
        self.found: MessageResult | None = None

    def send(self, request: MessageRequest, message: RenderedMessage) -> MessageResult:
        self.calls.append((request, message))
        if self.error is not None:
            raise self.error
        return self.result or MessageResult(status="sent", provider_message_id=f"rec-{len(self.calls)}")

    def find_delivered(self, request: MessageRequest, message: RenderedMessage, since: datetime) -> MessageResult | None:
        self.lookups += 1
        return self.found


def make_request(
    *,
    journey: str = "dunning-in_1",
    step: str = "notify-1",
    channel: Channel = Channel.email,
    template: str = "payment_failed",
    at: datetime = T0,
    customer_id: str = "cus_1",
    email: str | None = "ada@example.com",
    phone: str | None = "+14155552671",
) -> MessageRequest:
    return MessageRequest(
        journey_id=journey,
        step_id=step,
        channel=channel,
        template=template,
        customer=Customer(id=customer_id, name="Ada Lovelace", email=email, phone=phone, timezone="Europe/London"),
        amount=2500,
        currency="usd",
        payment_reference=journey.removeprefix("dunning-"),
        update_url="https://pay.test/u/1",
        next_action_at=at + timedelta(days=3),
        next_action="retry",
        at=at,
    )


def activities_with(store: Store, **kwargs) -> tuple[MessagingActivities, dict[Channel, RecordingSender]]:
    senders = {channel: RecordingSender(channel) for channel in Channel}
    return MessagingActivities(senders, store, **kwargs), senders


def row(store: Store, request: MessageRequest) -> MessageRecord:
    return next(r for r in store.messages_for_journey(request.journey_id) if r.dedupe_key == request.dedupe_key)


def run(activities: MessagingActivities, request: MessageRequest) -> MessageResult:
    return ActivityEnvironment().run(activities.send, request)


# --- the happy path and exactly-once ------------------------------------------------------------


def test_sends_once_and_keeps_the_rendered_message(store: Store) -> None:
    activities, senders = activities_with(store)
    request = make_request()
    result = run(activities, request)
    assert result.status == "sent" and result.provider_message_id == "rec-1"
    stored = row(store, request)
    assert stored.status == "sent" and stored.provider == "recording" and stored.provider_message_id == "rec-1"
    assert stored.recipient == "ada@example.com" and stored.locale == "en" and stored.template == "payment_failed"
    assert stored.subject == "Your payment of $25.00 didn't go through"
    assert stored.body_text and "https://pay.test/u/1" in stored.body_text and stored.body_html
    assert stored.created_at == T0 and stored.sent_at is not None


def test_same_dedupe_key_is_not_sent_twice(store: Store) -> None:
    activities, senders = activities_with(store)
    request = make_request()
    first = run(activities, request)
    second = run(activities, request)
    assert len(senders[Channel.email].calls) == 1
    assert second.status == "sent" and second.provider_message_id == first.provider_message_id
    # another channel of the same step is another message
    assert run(activities, make_request(channel=Channel.sms)).status == "sent"
    assert len(senders[Channel.sms].calls) == 1


def test_a_claim_left_by_a_crashed_attempt_adopts_what_the_provider_already_has(store: Store) -> None:
    activities, senders = activities_with(store)
    request = make_request(channel=Channel.sms)
    store.claim_message(MessageRecord(dedupe_key=request.dedupe_key, journey_id=request.journey_id, customer_id="cus_1",
                                      channel="sms", step_id=request.step_id, created_at=T0))
    senders[Channel.sms].found = MessageResult(status="sent", provider_message_id="SM_earlier")
    result = run(activities, request)
    assert result.provider_message_id == "SM_earlier"
    assert senders[Channel.sms].lookups == 1 and senders[Channel.sms].calls == []
    assert row(store, request).status == "sent" and row(store, request).provider_message_id == "SM_earlier"


def test_a_claim_left_by_a_crashed_attempt_is_sent_again_when_nothing_is_found(store: Store) -> None:
    activities, senders = activities_with(store)
    request = make_request(channel=Channel.sms)
    store.claim_message(MessageRecord(dedupe_key=request.dedupe_key, journey_id=request.journey_id, customer_id="cus_1",
                                      channel="sms", step_id=request.step_id, created_at=T0))
    assert run(activities, request).status == "sent"
    assert senders[Channel.sms].lookups == 1 and len(senders[Channel.sms].calls) == 1


# --- opt-outs and unreachable customers -------------------------------------------------------------


def test_opted_out_channel_is_skipped_without_sending(store: Store) -> None:
    activities, senders = activities_with(store)
    store.set_opt_out("cus_1", "email", True, source="test")
    request = make_request()
    result = run(activities, request)
    assert result.status == "opted_out" and "email" in result.detail
    assert senders[Channel.email].calls == []
    assert row(store, request).status == "skipped"
    assert run(activities, request).status == "opted_out"  # a retry returns the recorded result


def test_sms_stop_recorded_under_the_phone_number_is_honoured(store: Store) -> None:
    activities, senders = activities_with(store)
    store.set_opt_out(phone_opt_out_key("+14155552671"), "sms", True, source="twilio:STOP")
    assert run(activities, make_request(channel=Channel.sms)).status == "opted_out"
    assert senders[Channel.sms].calls == []
    assert run(activities, make_request(channel=Channel.email)).status == "sent"  # only SMS


def test_sms_stop_matches_a_national_number_with_the_customers_country(store: Store) -> None:
    activities, senders = activities_with(store)
    store.set_opt_out(phone_opt_out_key("+40712345678"), "sms", True, source="twilio:STOP")
    request = make_request(channel=Channel.sms, phone="0712 345 678")
    request = request.model_copy(update={"customer": request.customer.model_copy(update={"country": "RO"})})
    assert run(activities, request).status == "opted_out"
    assert senders[Channel.sms].calls == []


def test_missing_or_invalid_address_is_undeliverable_without_a_provider_call(store: Store) -> None:
    activities, senders = activities_with(store)
    no_email = make_request(email=None)
    bad_phone = make_request(channel=Channel.sms, phone="12")
    assert run(activities, no_email).status == "undeliverable"
    assert run(activities, bad_phone).status == "undeliverable"
    assert senders[Channel.email].calls == [] and senders[Channel.sms].calls == []
    assert row(store, no_email).status == "undeliverable" and "email address" in (row(store, no_email).error or "")


def test_provider_undeliverable_is_recorded_and_not_retried(store: Store) -> None:
    activities, senders = activities_with(store)
    senders[Channel.email].result = MessageResult(status="undeliverable", detail="mailbox does not exist")
    request = make_request()
    assert run(activities, request).status == "undeliverable"
    assert row(store, request).status == "undeliverable" and row(store, request).error == "mailbox does not exist"
    assert run(activities, request).detail == "mailbox does not exist"
    assert len(senders[Channel.email].calls) == 1


def test_provider_opt_out_is_remembered_for_the_customer(store: Store) -> None:
    activities, senders = activities_with(store)
    senders[Channel.sms].result = MessageResult(status="opted_out", detail="Twilio error 21610")
    assert run(activities, make_request(channel=Channel.sms)).status == "opted_out"
    assert "sms" in store.opted_out_channels("cus_1")


# --- failures -------------------------------------------------------------------------------------


def test_transient_failure_raises_keeps_the_claim_and_the_retry_sends(store: Store) -> None:
    activities, senders = activities_with(store)
    senders[Channel.email].error = ApplicationError("HTTP 503", type="ProviderError")
    request = make_request()
    with pytest.raises(ApplicationError) as raised:
        run(activities, request)
    assert not raised.value.non_retryable
    assert row(store, request).status == "claimed" and "503" in (row(store, request).error or "")
    senders[Channel.email].error = None
    assert run(activities, request).status == "sent"
    assert row(store, request).status == "sent" and row(store, request).error is None


def test_network_errors_propagate_for_temporal_to_retry(store: Store) -> None:
    activities, senders = activities_with(store)
    senders[Channel.email].error = TimeoutError("read timed out")
    with pytest.raises(TimeoutError):
        run(activities, make_request())
    assert row(store, make_request()).status == "claimed"


def test_permanent_rejection_marks_the_message_failed(store: Store) -> None:
    activities, senders = activities_with(store)
    senders[Channel.email].error = ApplicationError("sender not verified", type="MessageRejected", non_retryable=True)
    with pytest.raises(ApplicationError):
        run(activities, make_request())
    assert row(store, make_request()).status == "failed"


def test_unknown_template_is_a_non_retryable_error(store: Store) -> None:
    activities, senders = activities_with(store)
    with pytest.raises(ApplicationError) as raised:
        run(activities, make_request(template="winback"))
    assert raised.value.type == "TemplateMissing" and raised.value.non_retryable
    assert senders[Channel.email].calls == []


# --- the cross-journey frequency cap ----------------------------------------------------------------


def test_frequency_cap_counts_messages_across_journeys(store: Store) -> None:
    activities, senders = activities_with(store)
    run(activities, make_request(journey="dunning-in_A", at=T0))
    run(activities, make_request(journey="dunning-in_A", step="notify-2", channel=Channel.sms, at=T0 + timedelta(hours=1)))
    third = make_request(journey="dunning-in_B", at=T0 + timedelta(hours=2))
    with pytest.raises(ApplicationError) as raised:
        run(activities, third)
    error = raised.value
    assert error.type == "FrequencyCapped" and error.non_retryable
    assert error.details == ((T0 + timedelta(hours=24)).isoformat(),)
    assert senders[Channel.email].calls and len(senders[Channel.email].calls) == 1
    assert all(r.dedupe_key != third.dedupe_key for r in store.messages_for_journey("dunning-in_B"))  # nothing claimed
    later = make_request(journey="dunning-in_B", at=T0 + timedelta(hours=24))
    assert run(activities, later).status == "sent"


def test_frequency_cap_over_seven_days(store: Store) -> None:
    activities, _ = activities_with(store)
    for day in range(5):
        run(activities, make_request(journey=f"dunning-in_{day}", at=T0 + timedelta(days=day)))
    with pytest.raises(ApplicationError) as raised:
        run(activities, make_request(journey="dunning-in_5", at=T0 + timedelta(days=5)))
    assert raised.value.details == ((T0 + timedelta(days=7)).isoformat(),)


def test_frequency_cap_is_configurable_and_ignores_undelivered_messages(store: Store) -> None:
    activities, senders = activities_with(store, max_per_24h=1)
    senders[Channel.email].result = MessageResult(status="undeliverable", detail="bounced")
    run(activities, make_request(journey="dunning-in_A"))
    senders[Channel.email].result = None
    assert run(activities, make_request(journey="dunning-in_B", at=T0 + timedelta(minutes=5))).status == "sent"
    with pytest.raises(ApplicationError, match="frequency cap"):
        run(activities, make_request(journey="dunning-in_C", at=T0 + timedelta(minutes=10)))


def test_payment_receipts_are_not_capped_and_retries_are_not_recounted(store: Store) -> None:
    activities, senders = activities_with(store)
    run(activities, make_request(journey="dunning-in_A"))
    run(activities, make_request(journey="dunning-in_A", step="notify-2"))
    receipt = make_request(journey="dunning-in_B", template="payment_recovered", at=T0 + timedelta(hours=1))
    assert run(activities, receipt).status == "sent"
    assert run(activities, make_request(journey="dunning-in_A", step="notify-2")).status == "sent"  # same key again


# --- unsubscribe link and wiring --------------------------------------------------------------------


def test_emails_carry_a_signed_unsubscribe_link_when_the_public_url_is_known(store: Store) -> None:
    senders = {channel: RecordingSender(channel) for channel in Channel}
    activities = MessagingActivities(senders, store, public_url="https://dunning.test", unsubscribe_secret_provider=lambda: b"k")
    run(activities, make_request())
    _, message = senders[Channel.email].calls[0]
    token = message.text.split("https://dunning.test/unsubscribe/")[1].split()[0]
    assert read_unsubscribe_token(token, b"k") == ("cus_1", Channel.email)


def test_template_directory_override_reaches_the_activity(store: Store, tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "payment_failed.email.subject.j2").write_text("Custom: {{ amount }}")
    senders = {channel: RecordingSender(channel) for channel in Channel}
    run(MessagingActivities(senders, store, tmp_path), make_request())
    assert senders[Channel.email].calls[0][1].subject == "Custom: $25.00"


def test_build_senders_uses_the_outbox_without_credentials(capsys: pytest.CaptureFixture[str], store: Store) -> None:
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, []
    try:
        senders = build_senders({}, store=store)
    finally:
        root.handlers = handlers
    assert all(isinstance(senders[c], OutboxSender) for c in Channel)
    out = capsys.readouterr().out
    assert "OUTBOX for email (no SENDGRID_API_KEY)" in out
    assert "OUTBOX for sms (no TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN)" in out
    assert "OUTBOX for in_app (no DUNNING_INAPP_WEBHOOK_URL)" in out


def test_build_senders_picks_the_configured_providers() -> None:
    env = {
        "SENDGRID_API_KEY": "SG.key",
        "DUNNING_EMAIL_FROM": "Acme Billing <billing@acme.test>",
        "DUNNING_PUBLIC_URL": "https://dunning.test",
        "DUNNING_UNSUBSCRIBE_SECRET": "k",
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "token",
        "TWILIO_MESSAGING_SERVICE_SID": "MG" + "0" * 32,
        "DUNNING_INAPP_WEBHOOK_URL": "https://app.test/hooks/dunning",
        "DUNNING_INAPP_WEBHOOK_SECRET": "whsec",
    }
    senders = build_senders(env)
    assert isinstance(senders[Channel.email], SendGridEmailSender)
    assert isinstance(senders[Channel.sms], TwilioSmsSender)
    assert isinstance(senders[Channel.in_app], InAppWebhookSender)


def test_build_senders_refuses_half_configured_providers() -> None:
    with pytest.raises(ValueError, match="DUNNING_EMAIL_FROM"):
        build_senders({"SENDGRID_API_KEY": "SG.key"})
    with pytest.raises(ValueError, match="TWILIO_FROM_NUMBER"):
        build_senders({"TWILIO_ACCOUNT_SID": "AC" + "0" * 32, "TWILIO_AUTH_TOKEN": "t"})
    with pytest.raises(ValueError, match="DUNNING_INAPP_WEBHOOK_SECRET"):
        build_senders({"DUNNING_INAPP_WEBHOOK_URL": "https://app.test/hook"})


def test_helpers() -> None:
    assert normalize_phone("0712 345 678", "ro") == "+40712345678"
    assert normalize_phone("+1 415 555 2671") == "+14155552671"
    assert normalize_phone("12345") is None
    assert phone_opt_out_key("+1 (415) 555-2671") == "phone:+14155552671"
    assert parse_retry_after("30") == timedelta(seconds=30)
    assert parse_retry_after("Wed, 04 Mar 2026 10:00:30 GMT", now=datetime(2026, 3, 4, 10, 0, tzinfo=UTC)) == timedelta(seconds=30)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_the_cap_follows_the_journeys_published_policy(store: Store) -> None:
    from dunning.enums import Stage
    from dunning.policy import parse_policy
    from dunning.store import JourneyRecord

    text = (Path(__file__).resolve().parents[2] / "policies" / "default.yaml").read_text()
    text = text.replace("max_per_24h: 2", "max_per_24h: 3")
    version = store.publish_policy(name=parse_policy(text).name, yaml_text=text, published_by="test").version
    store.upsert_journey(JourneyRecord(
        journey_id="dunning-in_C", payment_reference="in_C", payment_kind="invoice", customer_id="cus_1",
        stage=Stage.awaiting_customer, amount=2500, currency="usd", policy_version=version,
        started_at=T0, updated_at=T0,
    ))
    activities, _ = activities_with(store)
    assert activities.caps_for("dunning-in_C")[0] == 3 and activities.caps_for("dunning-in_X") == (2, 5)
    run(activities, make_request(journey="dunning-in_A"))
    run(activities, make_request(journey="dunning-in_B", at=T0 + timedelta(hours=1)))
    assert run(activities, make_request(journey="dunning-in_C", at=T0 + timedelta(hours=2))).status == "sent"
    with pytest.raises(ApplicationError, match="frequency cap"):
        run(activities, make_request(journey="dunning-in_C", step="notify-2", at=T0 + timedelta(hours=3)))
