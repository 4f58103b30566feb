"""The outbox: the sender for channels without a provider (development, demos, tests).

Nothing leaves the machine: the rendered message is kept in the store's messages row and a
readable block is printed, so a developer sees exactly what a customer would receive.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from dunning.enums import Channel
from dunning.messaging import recipient
from dunning.ports import MessageRequest, MessageResult, RenderedMessage
from dunning.store import Store

logger = logging.getLogger(__name__)

_RULE = "-" * 72


class OutboxSender:
    name = "outbox"

    def __init__(self, channel: Channel, store: Store | None = None, *, stream: TextIO | None = None) -> None:
        self.channel = Channel(channel)
        self.store = store
        self.stream = stream

    def send(self, request: MessageRequest, message: RenderedMessage) -> MessageResult:
        from activities.messaging import message_record

        address = recipient(request.customer, request.channel)
        provider_message_id = f"outbox:{request.dedupe_key}"
        first = True
        if self.store is not None:
            # Idempotent: the messaging activity normally claimed this row (with the same body).
            self.store.claim_message(message_record(request, message, recipient=address))
            # The outbox's delivery is this write: print only for the call that made it, so a
            # retry after a later failure (e.g. a locked database) does not deliver twice.
            first = self.store.mark_sent_once(request.dedupe_key, provider="outbox", provider_message_id=provider_message_id)
        if first:
            print(format_block(request, message, address), file=self.stream or sys.stdout, flush=True)
            logger.info("outbox %s: %s to %s", self.channel.value, request.dedupe_key, address)
        return MessageResult(
            status="sent",
            detail=f"kept in the outbox ({self.channel.value} is not connected to a provider)",
            provider_message_id=provider_message_id,
        )


def format_block(request: MessageRequest, message: RenderedMessage, recipient: str | None) -> str:
    lines = [
        _RULE,
        f"OUTBOX {request.channel.value} -> {recipient or '(no recipient)'}",
        f"key: {request.dedupe_key}   template: {request.template}   locale: {request.customer.locale}",
    ]
    if message.subject:
        lines.append(f"{'subject' if request.channel is Channel.email else 'title'}: {message.subject}")
    lines += ["", message.text]
    if message.html:
        lines += ["", f"(+ HTML part, {len(message.html)} characters)"]
    lines.append(_RULE)
    return "\n".join(lines)
