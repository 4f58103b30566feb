"""The outbox sender: stored and printed, never delivered."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.messaging import MessagingActivities
from activities.outbox import OutboxSender
from dunning.enums import Channel
from dunning.models import Customer
from dunning.ports import MessageRequest
from dunning.rendering import render
from dunning.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/messages.db")
    store.upgrade()
    yield store
    store.dispose()


def make_request(channel: Channel = Channel.email) -> MessageRequest:
    return MessageRequest(
        journey_id="dunning-in_1",
        step_id="notify-1",
        channel=channel,
        template="final_notice",
        customer=Customer(id="cus_1", name="Ada", email="ada@example.com", phone="+14155552671", locale="ro"),
        amount=9900,
        currency="ron",
        payment_reference="in_1",
        update_url="https://pay.test/u/1",
        next_action_at=datetime(2026, 3, 9, 9, tzinfo=UTC),
        next_action="cancel_subscription",
        at=datetime(2026, 3, 2, 9, tzinfo=UTC),
    )


def test_outbox_stores_and_prints_a_readable_block(store: Store) -> None:
    stream = io.StringIO()
    request = make_request()
    message = render(request)
    result = OutboxSender(Channel.email, store, stream=stream).send(request, message)
    assert result.status == "sent" and result.provider_message_id == "outbox:dunning-in_1:notify-1:email"
    block = stream.getvalue()
    assert "OUTBOX email -> ada@example.com" in block
    assert f"subject: {message.subject}" in block and message.text in block and "HTML part" in block
    [row] = store.messages_for_journey("dunning-in_1")
    assert row.body_text == message.text and row.body_html == message.html and row.subject == message.subject


def test_outbox_through_the_activity_marks_the_row_sent(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    senders = {channel: OutboxSender(channel, store) for channel in Channel}
    acts = MessagingActivities(senders, store)
    result = ActivityEnvironment().run(acts.send, make_request(Channel.sms))
    assert result.status == "sent"
    [row] = store.messages_for_journey("dunning-in_1")
    assert row.status == "sent" and row.provider == "outbox" and row.recipient == "+14155552671"
    assert "OUTBOX sms -> +14155552671" in capsys.readouterr().out
    ActivityEnvironment().run(acts.send, make_request(Channel.sms))
    assert capsys.readouterr().out == ""  # the same key is not "sent" twice


def test_outbox_without_a_store_only_prints() -> None:
    stream = io.StringIO()
    request = make_request(Channel.in_app)
    result = OutboxSender(Channel.in_app, stream=stream).send(request, render(request))
    assert result.status == "sent" and "title: " in stream.getvalue()


def test_a_retry_after_a_failed_status_write_does_not_deliver_twice(tmp_path):
    import io

    from activities.outbox import OutboxSender
    from dunning.enums import Channel
    from dunning.models import Customer
    from dunning.ports import MessageRequest, RenderedMessage
    from dunning.store import Store
    from datetime import datetime, timezone

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.upgrade()
    printed = io.StringIO()
    sender = OutboxSender(Channel.email, store, stream=printed)
    request = MessageRequest(
        journey_id="dunning-in_x", step_id="notice", channel=Channel.email, template="payment_failed",
        customer=Customer(id="cus_x", email="x@example.com"), amount=100, currency="usd",
        payment_reference="in_x", at=datetime(2026, 11, 1, tzinfo=timezone.utc),
    )
    message = RenderedMessage(subject="s", text="t")
    sender.send(request, message)
    sender.send(request, message)  # the activity retried: its own status write had failed
    assert printed.getvalue().count("OUTBOX email") == 1
    assert [m.status for m in store.messages_for_journey("dunning-in_x")] == ["sent"]
