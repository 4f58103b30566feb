"""The messaging activity: one customer message per journey step and channel.

Order of writes: claim the dedupe key `<journey id>:<step>:<channel>` in the store, call the
provider, then mark the row. What a retry finds decides what it does:

- `sent`, `undeliverable` or `skipped`: the recorded result is returned, no provider call.
- `claimed`: an earlier attempt died after the claim, possibly after the provider accepted the
  message (a crash or timeout between the provider call and the mark). Nothing can tell us
  which, so the message is sent again (at least once) and duplicates are made detectable:
  SendGrid gets the dedupe key as custom_args and an `X-Dunning-Dedupe-Key` header (visible in
  its Event Webhook and activity feed); the in-app webhook carries it as `Idempotency-Key`.
  Twilio has no idempotency key: before resending, the SMS sender looks for a message to the
  same number with the same body created since the claim and adopts it; a message Twilio
  accepted but does not list yet is sent twice.

Errors raised to Temporal (ApplicationError types):
- `FrequencyCapped` (non-retryable): this customer already got the cross-journey maximum
  (the `messaging` caps of the journey's published policy, else the constructor's, default
  2 per 24 h and 5 per 7 days); `details[0]` is the ISO time when a slot frees up. The check
  and the claim are separate transactions, so two journeys of one customer sending in the
  same instant can both pass: the cap is a courtesy limit, not a lock.
- `MessageRejected` (non-retryable): the provider refused the request itself (sender not
  verified, malformed payload); retrying cannot help.
- `TemplateMissing` (non-retryable): no template for this name/channel in any fallback locale.
- `ProviderThrottled` (retryable, `next_retry_delay` from Retry-After) and `ProviderError`
  (retryable: 5xx, rejected credentials that ops can fix). Timeouts and connection errors
  propagate unchanged and are retried too; the claim makes every retry safe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from dunning.enums import Channel
from dunning.messaging import (
    CAP_7D,
    CAP_EXEMPT_TEMPLATES,
    frequency_capped,
    next_allowed,
    normalize_phone,
    recipient,
    unreachable,
)
from dunning.policy import parse_policy
from dunning.ports import MessageRequest, MessageResult, MessageSender, RenderedMessage
from dunning.rendering import TemplateMissing, render, resolve_locale, unsubscribe_secret, unsubscribe_url
from dunning.store import MessageRecord, Store

if TYPE_CHECKING:
    from dunning.config import Settings

logger = logging.getLogger(__name__)

FREQUENCY_CAPPED = "FrequencyCapped"
MESSAGE_REJECTED = "MessageRejected"
PROVIDER_THROTTLED = "ProviderThrottled"
PROVIDER_ERROR = "ProviderError"
TEMPLATE_MISSING = "TemplateMissing"

DEFAULT_MAX_PER_24H = 2
DEFAULT_MAX_PER_7D = 5
# A receipt for a payment the customer just made should not wait for a free slot.
_FINAL_STATUSES = {"sent", "undeliverable", "skipped"}
_COUNTED_STATUSES = {"sent", "claimed"}  # claimed: in flight, or sent before a crash
PUBLIC_URL_ENV = "DUNNING_PUBLIC_URL"


# --- errors the senders raise -------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> timedelta | None:
    """Retry-After as seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(at - (now or datetime.now(UTC)), timedelta(0))


def throttled(provider: str, detail: str, retry_after: timedelta | None) -> ApplicationError:
    return ApplicationError(
        f"{provider} rate limit: {detail}", type=PROVIDER_THROTTLED, next_retry_delay=retry_after or None
    )


def provider_error(provider: str, detail: str) -> ApplicationError:
    return ApplicationError(f"{provider}: {detail}", type=PROVIDER_ERROR)


def rejected(provider: str, detail: str) -> ApplicationError:
    return ApplicationError(f"{provider} rejected the request: {detail}", type=MESSAGE_REJECTED, non_retryable=True)


# --- recipients -----------------------------------------------------------------------------------


def phone_opt_out_key(phone: str, country: str | None = None) -> str:
    """Contact-preference key for a phone number: inbound SMS (STOP) know only the number,
    and the store has no phone -> customer index, so opt-outs are kept under this key too."""
    return f"phone:{normalize_phone(phone, country) or phone.strip()}"


def message_record(
    request: MessageRequest,
    message: RenderedMessage | None,
    *,
    locale: str | None = None,
    recipient: str | None = None,
) -> MessageRecord:
    return MessageRecord(
        dedupe_key=request.dedupe_key,
        journey_id=request.journey_id,
        customer_id=request.customer.id,
        channel=request.channel.value,
        step_id=request.step_id,
        template=request.template,
        locale=locale or request.customer.locale,
        recipient=recipient,
        subject=message.subject if message else None,
        body_text=message.text if message else None,
        body_html=message.html if message else None,
        created_at=request.at,  # workflow time: the cap windows follow the journey's clock
    )


# --- the activity ---------------------------------------------------------------------------------


class MessagingActivities:
    def __init__(
        self,
        senders: Mapping[Channel, MessageSender],
        store: Store,
        template_dir: Path | None = None,
        *,
        max_per_24h: int = DEFAULT_MAX_PER_24H,
        max_per_7d: int = DEFAULT_MAX_PER_7D,
        cap_exempt_templates: Iterable[str] = CAP_EXEMPT_TEMPLATES,
        public_url: str | None = None,
        unsubscribe_secret_provider: Callable[[], bytes] = unsubscribe_secret,
    ) -> None:
        self.senders = dict(senders)
        self.store = store
        self.template_dir = template_dir
        self.default_caps = (max_per_24h, max_per_7d)
        self._policy_caps: dict[str, tuple[int, int]] = {}  # versions are immutable (name@sha)
        self.cap_exempt_templates = frozenset(cap_exempt_templates)
        self.public_url = public_url or os.environ.get(PUBLIC_URL_ENV) or None
        self._secret_provider = unsubscribe_secret_provider
        self._secret: bytes | None = None

    @activity.defn(name="messaging.send")
    def send(self, request: MessageRequest) -> MessageResult:
        key = request.dedupe_key
        existing = self._existing(request)
        if existing is not None and existing.status in _FINAL_STATUSES:
            _log("info", "%s already %s: not sending again", key, existing.status)
            return _result_of(existing)

        if self._opted_out(request):
            detail = f"the customer opted out of {request.channel.value}"
            self._finish_without_sending(request, "skipped", detail)
            return MessageResult(status="opted_out", detail=detail)

        address = recipient(request.customer, request.channel)
        if address is None:
            detail = unreachable(request.customer, request.channel)
            self._finish_without_sending(request, "undeliverable", detail)
            return MessageResult(status="undeliverable", detail=detail)

        if existing is None and request.template not in self.cap_exempt_templates:
            self._check_frequency_cap(request)

        sender = self.senders.get(request.channel)
        if sender is None:
            detail = f"no sender configured for {request.channel.value}"
            self._finish_without_sending(request, "undeliverable", detail)
            return MessageResult(status="undeliverable", detail=detail)

        message, locale = self._render(request)
        row = self.store.claim_message(message_record(request, message, locale=locale, recipient=address))
        if row.status in _FINAL_STATUSES:  # another attempt finished it in the meantime
            return _result_of(row)

        if existing is not None:
            found = self._find_delivered(sender, request, message, existing)
            if found is not None:
                self.store.mark_message(key, status="sent", provider=sender.name, provider_message_id=found.provider_message_id)
                return found

        try:
            result = sender.send(request, message)
        except ApplicationError as error:
            self._note_failure(key, "failed" if error.non_retryable else "claimed", sender.name, error)
            raise
        except Exception as error:
            self._note_failure(key, "claimed", sender.name, error)
            raise

        if result.status == "sent":
            self.store.mark_message(key, status="sent", provider=sender.name, provider_message_id=result.provider_message_id)
        elif result.status == "undeliverable":
            self.store.mark_message(key, status="undeliverable", provider=sender.name, error=result.detail)
        else:  # the provider knows the customer opted out (e.g. Twilio 21610 after STOP)
            self.store.mark_message(key, status="skipped", provider=sender.name, error=result.detail)
            self.store.set_opt_out(request.customer.id, request.channel.value, True, source=sender.name)
        _log("info", "%s via %s: %s %s", key, sender.name, result.status, result.detail)
        return result

    # -- steps --------------------------------------------------------------------------------

    def _existing(self, request: MessageRequest) -> MessageRecord | None:
        key = request.dedupe_key
        return next((r for r in self.store.messages_for_journey(request.journey_id) if r.dedupe_key == key), None)

    def _opted_out(self, request: MessageRequest) -> bool:
        channel = request.channel.value
        if channel in self.store.opted_out_channels(request.customer.id):
            return True
        if request.channel is Channel.sms and request.customer.phone:
            key = phone_opt_out_key(request.customer.phone, request.customer.country)
            return channel in self.store.opted_out_channels(key)
        return False

    def caps_for(self, journey_id: str) -> tuple[int, int]:
        """(per 24 h, per 7 days): the journey's policy when the store knows it, else the defaults."""
        journey = self.store.get_journey(journey_id)
        version = journey.policy_version if journey else None
        if not version:
            return self.default_caps
        if version not in self._policy_caps:
            record = self.store.get_policy(version)
            if record is None:
                return self.default_caps
            rules = parse_policy(record.yaml_text, version).messaging
            self._policy_caps[version] = (rules.max_per_24h, rules.max_per_7d)
        return self._policy_caps[version]

    def _check_frequency_cap(self, request: MessageRequest) -> None:
        per_day, per_week = self.caps_for(request.journey_id)
        rows = self.store.messages_for_customer(request.customer.id, request.at - CAP_7D)
        times = sorted(
            r.created_at for r in rows
            if r.status in _COUNTED_STATUSES and r.dedupe_key != request.dedupe_key and r.created_at is not None
        )
        allowed = next_allowed(times, request.at, per_day, per_week)
        if allowed > request.at:
            raise ApplicationError(
                frequency_capped(request.customer, allowed),
                allowed.isoformat(),
                type=FREQUENCY_CAPPED,
                non_retryable=True,
            )

    def _render(self, request: MessageRequest) -> tuple[RenderedMessage, str]:
        try:
            locale = resolve_locale(request.customer.locale, request.template, request.channel, template_dir=self.template_dir)
            link = self.unsubscribe_link(request.customer.id, request.channel) if request.channel is Channel.email else None
            return render(request, template_dir=self.template_dir, unsubscribe_url=link), locale
        except TemplateMissing as error:
            raise ApplicationError(str(error), type=TEMPLATE_MISSING, non_retryable=True) from error

    def unsubscribe_link(self, customer_id: str, channel: Channel) -> str | None:
        if not self.public_url:
            return None
        if self._secret is None:
            self._secret = self._secret_provider()
        return unsubscribe_url(self.public_url, customer_id, channel, self._secret)

    def _find_delivered(
        self, sender: MessageSender, request: MessageRequest, message: RenderedMessage, row: MessageRecord
    ) -> MessageResult | None:
        find = getattr(sender, "find_delivered", None)
        if find is None or row.created_at is None:
            return None
        found = find(request, message, row.created_at)
        if found is not None:
            _log("warning", "%s: %s already has this message (%s); not sending it again", request.dedupe_key, sender.name, found.provider_message_id)
        return found

    def _finish_without_sending(self, request: MessageRequest, status: str, detail: str) -> None:
        """Keep a row for the timeline; a cap slot is not used (only sent/claimed rows count)."""
        self.store.claim_message(message_record(request, None, recipient=None))
        self.store.mark_message(request.dedupe_key, status=status, error=detail)
        _log("info", "%s: %s (%s)", request.dedupe_key, status, detail)

    def _note_failure(self, key: str, status: str, provider: str, error: BaseException) -> None:
        try:
            self.store.mark_message(key, status=status, provider=provider, error=f"{type(error).__name__}: {error}"[:2000])
        except Exception:  # the provider error is the one worth raising
            logger.exception("could not record the failure of %s", key)


def _result_of(row: MessageRecord) -> MessageResult:
    if row.status == "sent":
        return MessageResult(status="sent", detail="already sent", provider_message_id=row.provider_message_id)
    if row.status == "skipped":
        return MessageResult(status="opted_out", detail=row.error or "opted out")
    return MessageResult(status="undeliverable", detail=row.error or "undeliverable")


def _log(level: str, message: str, *args: Any) -> None:
    target = activity.logger if activity.in_activity() else logger
    getattr(target, level)(message, *args)


# --- wiring ---------------------------------------------------------------------------------------


def build_senders(
    settings: Settings | Mapping[str, str] | None = None, *, store: Store | None = None
) -> dict[Channel, MessageSender]:
    """The real provider per channel when its credentials are set, else the outbox (loudly).

    email: SENDGRID_API_KEY (+ DUNNING_EMAIL_FROM, optional SENDGRID_API_BASE);
    sms: TWILIO_ACCOUNT_SID + TWILIO_AUTH_TOKEN + (TWILIO_FROM_NUMBER or
    TWILIO_MESSAGING_SERVICE_SID), optional TWILIO_API_BASE;
    in_app: DUNNING_INAPP_WEBHOOK_URL + DUNNING_INAPP_WEBHOOK_SECRET.
    `settings` may be the Settings object (the provider variables are read from the process
    environment, as Settings does not model them) or an explicit mapping.
    """
    from activities.outbox import OutboxSender

    env: Mapping[str, str] = settings if isinstance(settings, Mapping) else os.environ
    senders: dict[Channel, MessageSender] = {}

    if env.get("SENDGRID_API_KEY"):
        from activities.sendgrid_email import SendGridEmailSender

        senders[Channel.email] = SendGridEmailSender.from_env(env)
    else:
        _announce_outbox(Channel.email, "no SENDGRID_API_KEY")

    if env.get("TWILIO_ACCOUNT_SID") or env.get("TWILIO_AUTH_TOKEN"):
        from activities.twilio_sms import TwilioSmsSender

        senders[Channel.sms] = TwilioSmsSender.from_env(env)
    else:
        _announce_outbox(Channel.sms, "no TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN")

    if env.get("DUNNING_INAPP_WEBHOOK_URL"):
        from activities.in_app import InAppWebhookSender

        senders[Channel.in_app] = InAppWebhookSender.from_env(env, store=store)
    else:
        _announce_outbox(Channel.in_app, "no DUNNING_INAPP_WEBHOOK_URL")

    for channel in Channel:
        senders.setdefault(channel, OutboxSender(channel, store))
    return senders


def _announce_outbox(channel: Channel, reason: str) -> None:
    message = f"OUTBOX for {channel.value} ({reason}): messages are printed and stored, not delivered"
    if logging.getLogger().handlers:
        logger.warning(message)
    else:  # logging not configured: still say it where a developer looks
        print(message, flush=True)
