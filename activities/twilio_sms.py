"""SMS through Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`) with the
official SDK.

Twilio has no idempotency key. When the messaging activity resumes a message whose earlier
attempt may have reached Twilio, `find_delivered` looks for a message to the same number with
the same body created since the claim, and the activity adopts it instead of sending again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from activities.messaging import parse_retry_after, provider_error, rejected, throttled
from dunning.enums import Channel
from dunning.messaging import recipient, unreachable
from dunning.ports import MessageRequest, MessageResult, RenderedMessage

logger = logging.getLogger(__name__)

# Error codes of the create call that mean "this number cannot get our SMS" (the engine then
# falls back to another channel); see https://www.twilio.com/docs/api/errors.
UNDELIVERABLE_CODES = {
    21211: "invalid 'To' phone number",
    21214: "'To' phone number cannot be reached",
    21217: "phone number does not appear to be valid",
    21265: "'To' number cannot be a short code",
    21407: "this phone number type does not support SMS",
    21408: "sending to this region is not enabled",
    21612: "'To' number is not currently reachable via SMS",
    21614: "'To' number is not a valid mobile number",
    21635: "'To' number is a landline",
}
OPTED_OUT_CODES = {21610: "the recipient replied STOP to this sender"}
THROTTLED_CODES = {20429, 14107}  # too many requests; SMS send rate limit exceeded
TRANSIENT_CODES = {20500, 20503}
# Messages Twilio lists for a number, newest first, when looking for an earlier attempt's SMS.
LOOKUP_LIMIT = 20
LOOKUP_SLACK = timedelta(minutes=10)  # clock skew between our claim and Twilio's date_created


class _HeaderKeepingHttpClient(TwilioHttpClient):
    """TwilioRestException drops the response headers; Retry-After is kept here per thread."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        self._local.retry_after = None
        response = super().request(*args, **kwargs)
        if response.status_code == 429 and response.headers is not None:
            self._local.retry_after = response.headers.get("Retry-After")
        return response

    @property
    def last_retry_after(self) -> str | None:
        return getattr(self._local, "retry_after", None)


class TwilioSmsSender:
    channel = Channel.sms
    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio needs both TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs a sender: set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        self.http = _HeaderKeepingHttpClient(timeout=timeout)
        self.client = Client(account_sid, auth_token, http_client=self.http)
        if api_base:
            # The generated resources resolve every URL against the domain's base_url.
            self.client.api.base_url = api_base.rstrip("/")
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TwilioSmsSender:
        return cls(
            env.get("TWILIO_ACCOUNT_SID", ""),
            env.get("TWILIO_AUTH_TOKEN", ""),
            from_number=env.get("TWILIO_FROM_NUMBER") or None,
            messaging_service_sid=env.get("TWILIO_MESSAGING_SERVICE_SID") or None,
            api_base=env.get("TWILIO_API_BASE") or None,
        )

    @property
    def _messages(self):
        return self.client.api.v2010.account.messages

    def send(self, request: MessageRequest, message: RenderedMessage) -> MessageResult:
        to = recipient(request.customer, request.channel)
        if to is None:
            return MessageResult(status="undeliverable", detail=unreachable(request.customer, request.channel))
        params: dict[str, Any] = {"to": to, "body": message.text}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        try:
            sent = self._messages.create(**params)
        except (TwilioRestException, TwilioServiceException) as error:
            return self._failure(error)
        segments = f", {sent.num_segments} segment(s)" if sent.num_segments else ""
        return MessageResult(status="sent", detail=f"{sent.status or 'accepted'} by Twilio{segments}", provider_message_id=sent.sid)

    def find_delivered(self, request: MessageRequest, message: RenderedMessage, since: datetime) -> MessageResult | None:
        to = recipient(request.customer, request.channel)
        if to is None:
            return None
        try:
            recent = self._messages.list(to=to, limit=LOOKUP_LIMIT, page_size=LOOKUP_LIMIT)
        except (TwilioRestException, TwilioServiceException) as error:
            logger.warning("Twilio lookup before resending to %s failed (%s): sending again", to, error)
            return None
        for item in recent:
            created = item.date_created
            if item.body == message.text and (created is None or created >= since - LOOKUP_SLACK):
                return MessageResult(status="sent", detail="found at Twilio from an earlier attempt", provider_message_id=item.sid)
        return None

    def _failure(self, error: TwilioRestException | TwilioServiceException) -> MessageResult:
        status = int(error.status or 0)
        code = int(error.code) if error.code else None
        text = getattr(error, "msg", None) or getattr(error, "detail", None) or getattr(error, "title", "")
        detail = f"Twilio error {code}: {text}"
        if code in UNDELIVERABLE_CODES:
            return MessageResult(status="undeliverable", detail=f"{detail} ({UNDELIVERABLE_CODES[code]})")
        if code in OPTED_OUT_CODES:
            return MessageResult(status="opted_out", detail=f"{detail} ({OPTED_OUT_CODES[code]})")
        if status == 429 or code in THROTTLED_CODES:
            raise throttled("Twilio", detail, parse_retry_after(self.http.last_retry_after))
        if status >= 500 or status in (401, 403) or code in TRANSIENT_CODES:
            raise provider_error("Twilio", f"HTTP {status}: {detail}")
        raise rejected("Twilio", f"HTTP {status}: {detail}")
