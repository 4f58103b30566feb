"""Email through SendGrid's v3 Mail Send API (`POST /v3/mail/send`) with the official SDK.

Every email has a text and an HTML part, one-click unsubscribe headers (RFC 8058) pointing at
`{DUNNING_PUBLIC_URL}/unsubscribe/<signed token>`, and the dedupe key as a custom arg and a
header: SendGrid has no idempotency key, so a duplicate after a crash is at least detectable
in its Event Webhook and activity feed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, From, Header, Mail, To

from activities.messaging import (
    PUBLIC_URL_ENV,
    parse_retry_after,
    provider_error,
    rejected,
    throttled,
)
from dunning.enums import Channel
from dunning.messaging import recipient, unreachable
from dunning.ports import MessageRequest, MessageResult, RenderedMessage
from dunning.rendering import unsubscribe_secret, unsubscribe_url

logger = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.sendgrid.com"
DEDUPE_HEADER = "X-Dunning-Dedupe-Key"
# Mail Send reports a bad recipient as a 400 on the personalizations' `to` field.
_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.to(\.\d+)?(\.email)?$")


class SendGridEmailSender:
    channel = Channel.email
    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        from_email: str,
        *,
        host: str | None = None,
        public_url: str | None = None,
        unsubscribe_secret_provider: Callable[[], bytes] = unsubscribe_secret,
        timeout: float = 10.0,
    ) -> None:
        if not from_email:
            raise ValueError("SendGrid needs a sender: set DUNNING_EMAIL_FROM, e.g. 'Acme Billing <billing@acme.com>'")
        self.client = SendGridAPIClient(api_key, host=(host or DEFAULT_HOST).rstrip("/"))
        self.client.client.timeout = timeout  # python_http_client passes it to every request
        self.from_email = from_email
        self.public_url = public_url
        self._secret_provider = unsubscribe_secret_provider
        self._secret: bytes | None = None
        if not public_url:
            logger.warning("SendGrid: %s is not set, emails go out without List-Unsubscribe headers", PUBLIC_URL_ENV)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SendGridEmailSender:
        return cls(
            env["SENDGRID_API_KEY"],
            env.get("DUNNING_EMAIL_FROM", ""),
            host=env.get("SENDGRID_API_BASE") or None,
            public_url=env.get(PUBLIC_URL_ENV) or None,
            unsubscribe_secret_provider=lambda: unsubscribe_secret(env),
        )

    def send(self, request: MessageRequest, message: RenderedMessage) -> MessageResult:
        to = recipient(request.customer, request.channel)
        if to is None:
            return MessageResult(status="undeliverable", detail=unreachable(request.customer, request.channel))
        try:
            response = self.client.send(self.build_mail(request, message, to))
        except HTTPError as error:
            return self._failure(error, to)
        message_id = _header(response.headers, "X-Message-Id")
        return MessageResult(status="sent", detail=f"accepted by SendGrid ({response.status_code})", provider_message_id=message_id)

    def build_mail(self, request: MessageRequest, message: RenderedMessage, to: str) -> Mail:
        mail = Mail(
            from_email=From(self.from_email),
            to_emails=To(to, request.customer.name or None),
            subject=message.subject or request.template,
            plain_text_content=message.text,
            html_content=message.html,
        )
        headers = [Header(DEDUPE_HEADER, request.dedupe_key)]
        link = self._unsubscribe_link(request.customer.id)
        if link:
            headers += [
                Header("List-Unsubscribe", f"<{link}>"),
                Header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ]
        mail.header = headers
        mail.custom_arg = [
            CustomArg("dedupe_key", request.dedupe_key),
            CustomArg("journey_id", request.journey_id),
            CustomArg("template", request.template),
        ]
        mail.category = [Category("dunning"), Category(request.template)]
        return mail

    def _unsubscribe_link(self, customer_id: str) -> str | None:
        if not self.public_url:
            return None
        if self._secret is None:
            self._secret = self._secret_provider()
        return unsubscribe_url(self.public_url, customer_id, Channel.email, self._secret)

    def _failure(self, error: HTTPError, to: str) -> MessageResult:
        status = int(error.status_code)
        errors = _errors(error.body)
        detail = "; ".join(f"{e.get('field') or '-'}: {e.get('message')}" for e in errors) or str(error.reason)
        if status == 400 and any(_is_recipient_error(e) for e in errors):
            return MessageResult(status="undeliverable", detail=f"SendGrid refused {to}: {detail}")
        if status == 429:
            raise throttled("SendGrid", detail, _retry_after(error.headers))
        if status >= 500 or status in (401, 403):
            # 401/403: a revoked key or unverified sender is fixed by ops; retrying picks it up.
            raise provider_error("SendGrid", f"HTTP {status}: {detail}")
        raise rejected("SendGrid", f"HTTP {status}: {detail}")


def _errors(body: Any) -> list[dict[str, Any]]:
    try:
        data = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body or "{}")
    except (ValueError, UnicodeDecodeError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _is_recipient_error(error: dict[str, Any]) -> bool:
    field = str(error.get("field") or "")
    message = str(error.get("message") or "").lower()
    return bool(_RECIPIENT_FIELD.match(field)) or "valid address" in message


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    value = headers.get(name)
    return str(value) if value else None


def _retry_after(headers: Any) -> timedelta | None:
    delay = parse_retry_after(_header(headers, "Retry-After"))
    if delay is not None:
        return delay
    reset = _header(headers, "X-RateLimit-Reset")  # SendGrid's own: the epoch second the window resets
    if reset and reset.isdigit():
        return timedelta(seconds=max(int(reset) - int(time.time()), 0))
    return None
