"""Customer-facing messaging endpoints: Twilio inbound SMS (STOP/START) and email unsubscribe.

Mount with `app.include_router(build_router(lambda: store))`.

- `POST /webhooks/twilio`: Twilio's inbound-message webhook, verified with the X-Twilio-Signature
  against TWILIO_AUTH_TOKEN and the public URL (`DUNNING_PUBLIC_URL` + path, as configured in
  the Twilio console; without it, the URL the request arrived at). Opt-out keywords opt the
  sender's number out of SMS, opt-in keywords opt it back in. The store has no phone -> customer
  index, so the preference is kept under `phone:<E.164>` (see `phone_opt_out_key`), which the
  messaging activity checks before every SMS.
- `GET /unsubscribe/{token}`: a confirmation page. It does not unsubscribe by itself: mail
  scanners prefetch links, and RFC 8058 requires the one-click action to be a POST.
- `POST /unsubscribe/{token}`: unsubscribes (the `List-Unsubscribe-Post` one-click target and
  the page's button).
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Callable, Mapping

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)
from twilio.twiml.messaging_response import MessagingResponse

from activities.messaging import PUBLIC_URL_ENV, phone_opt_out_key
from dunning.enums import Channel
from dunning.rendering import InvalidToken, read_unsubscribe_token, unsubscribe_secret
from dunning.store import Store

logger = logging.getLogger(__name__)

# Twilio's default opt-out / opt-in / help keywords (Advanced Opt-Out uses the same lists).
OPT_OUT_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})


def keyword_of(body: str | None) -> str | None:
    """The keyword a whole SMS body is, if any: "  stop. " -> "STOP"."""
    text = re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", (body or "").upper())).strip()
    if text in OPT_OUT_KEYWORDS or text in OPT_IN_KEYWORDS or text in HELP_KEYWORDS:
        return text
    return None


def build_router(store_provider: Callable[[], Store], *, env: Mapping[str, str] | None = None) -> APIRouter:
    settings_env: Mapping[str, str] = os.environ if env is None else env
    router = APIRouter(tags=["messaging"])
    secret_cache: list[bytes] = []

    def secret() -> bytes:
        if not secret_cache:
            secret_cache.append(unsubscribe_secret(settings_env))
        return secret_cache[0]

    def customer_channel(token: str) -> tuple[str, Channel]:
        try:
            return read_unsubscribe_token(token, secret())
        except InvalidToken as error:
            raise HTTPException(400, f"This unsubscribe link is not valid ({error}). Please use the link from your most recent email.") from error

    @router.post("/webhooks/twilio", response_class=Response)
    async def twilio_inbound(request: Request, store: Store = Depends(store_provider)) -> Response:
        token = settings_env.get("TWILIO_AUTH_TOKEN")
        if not token:
            raise HTTPException(503, "TWILIO_AUTH_TOKEN is not set: Twilio webhooks cannot be verified")
        raw = (await request.body()).decode("utf-8", "replace")
        params = QueryParams(raw)
        public = settings_env.get(PUBLIC_URL_ENV)
        url = str(request.url)
        if public:
            url = public.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
        if not RequestValidator(token).validate(url, params, request.headers.get(SIGNATURE_HEADER, ""), algorithm):
            raise HTTPException(403, "invalid X-Twilio-Signature")

        sender = params.get("From", "")
        # Advanced Opt-Out tells us the keyword class itself; otherwise read the body.
        keyword = (params.get("OptOutType") or "").upper() or keyword_of(params.get("Body"))
        event_id = params.get("MessageSid") or params.get("SmsSid")
        await run_in_threadpool(_apply_inbound, store, event_id, sender, keyword)
        return Response(str(MessagingResponse()), media_type="application/xml")

    @router.get("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe_page(token: str) -> HTMLResponse:
        _, channel = customer_channel(token)
        what = "payment reminder emails" if channel is Channel.email else f"payment reminders by {channel.value}"
        return HTMLResponse(_page(
            "Unsubscribe",
            f"<p>Stop receiving {what}?</p>"
            f'<form method="post"><button type="submit" style="font-size:16px;padding:10px 20px;">Unsubscribe</button></form>',
        ))

    @router.post("/unsubscribe/{token}", response_class=HTMLResponse)
    def unsubscribe(token: str, store: Store = Depends(store_provider)) -> HTMLResponse:
        customer_id, channel = customer_channel(token)
        store.set_opt_out(customer_id, channel.value, True, source="unsubscribe_link")
        store.audit(actor="customer", action="opt_out", target=customer_id, reason=f"{channel.value} unsubscribe link")
        logger.info("customer %s unsubscribed from %s", customer_id, channel.value)
        return HTMLResponse(_page(
            "Unsubscribed",
            "<p>You're unsubscribed. We won't send you payment reminders this way any more.</p>"
            "<p>Important account notices may still reach you through other channels.</p>",
        ))

    return router


def _apply_inbound(store: Store, event_id: str | None, sender: str, keyword: str | None) -> None:
    if event_id:
        payload = {"from": sender, "keyword": keyword}  # not the body: it may hold anything
        if not store.record_webhook_event(event_id=event_id, source="twilio", type=f"sms.{(keyword or 'inbound').lower()}", payload=payload):
            return  # Twilio retried a webhook we already applied
    status = "ignored"
    if sender and keyword in OPT_OUT_KEYWORDS:
        store.set_opt_out(phone_opt_out_key(sender), Channel.sms.value, True, source=f"twilio:{keyword}")
        status = "processed"
    elif sender and keyword in OPT_IN_KEYWORDS:
        store.set_opt_out(phone_opt_out_key(sender), Channel.sms.value, False, source=f"twilio:{keyword}")
        status = "processed"
    if event_id:
        store.mark_webhook_event(event_id, status)
    if status == "processed":
        logger.info("SMS %s from %s recorded", keyword, sender)


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title></head>'
        f'<body style="font-family:-apple-system,Segoe UI,Roboto,Arial,sans-serif;max-width:480px;margin:48px auto;padding:0 16px;line-height:1.6;">'
        f"<h1 style=\"font-size:22px;\">{html.escape(title)}</h1>{body}</body></html>"
    )
