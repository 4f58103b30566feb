"""The sandbox's stand-in for Stripe's hosted invoice page: where reminder links lead without Stripe.

Mounted only when the sandbox gateway is in use. A customer (or a newcomer trying the engine)
adds a working test card here; the journey hears about it exactly as it would from Stripe's
`payment_method.attached` webhook, and retries promptly.
"""

from __future__ import annotations

import secrets
from html import escape

from fastapi import APIRouter, Form, HTTPException
from fastapi.responses import HTMLResponse
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.sandbox import SandboxGateway
from dunning.journey import UPDATE_PAYMENT_METHOD, PaymentMethodUpdated
from dunning.models import journey_id_for
from dunning.rendering import DEFAULT_LOCALE, format_amount
from dunning.scenarios import ScenarioPaymentMethod

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Update your payment method</title>
<style>body{{font:16px system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1f2933}}
.box{{border:1px solid #d9e2ec;border-radius:8px;padding:1.5rem}} .tag{{background:#fff3c4;padding:.2rem .5rem;border-radius:4px;font-size:.8rem}}
button{{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:6px;background:#2f80ed;color:#fff;cursor:pointer}}</style></head>
<body><p class="tag">SANDBOX — no real card, no real money</p><div class="box">{body}</div></body></html>"""


def build_router(services, gateway: SandboxGateway) -> APIRouter:
    router = APIRouter(prefix="/sandbox", tags=["sandbox"])

    @router.get("/pay/{payment_reference}", response_class=HTMLResponse)
    def page(payment_reference: str) -> str:  # sync: FastAPI runs the store read off the event loop
        journey = services.store.get_journey(journey_id_for(payment_reference))
        if journey is None:
            raise HTTPException(404, f"no payment {payment_reference!r} is being collected")
        amount = format_amount(journey.amount, journey.currency, DEFAULT_LOCALE)  # the page is in English
        if journey.stage.terminal:
            body = f"<h1>Nothing to pay</h1><p>Payment {escape(payment_reference)} is {escape(journey.stage.value)}.</p>"
        else:
            body = (
                f"<h1>Your payment of {escape(amount)} did not go through</h1>"
                "<p>Add a card and we will retry right away.</p>"
                f'<form method="post" action="/sandbox/pay/{escape(payment_reference)}">'
                '<button type="submit">Add a working test card</button></form>'
            )
        return _PAGE.format(body=body)

    @router.post("/pay/{payment_reference}", response_class=HTMLResponse)
    async def add_card(payment_reference: str, brand: str = Form("visa")) -> str:
        journey_id = journey_id_for(payment_reference)
        card = ScenarioPaymentMethod.model_validate(
            {"id": f"pm_sandbox_{secrets.token_hex(6)}", "brand": brand, "behavior": {"default": "succeeded"}}
        )
        try:
            method = gateway.attach_payment_method(payment_reference, card)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from exc
        client = await services.temporal()
        update = PaymentMethodUpdated(event_id=f"sandbox:{method.id}", payment_method=method, source="sandbox page")
        try:
            await client.get_workflow_handle(journey_id).execute_update(
                UPDATE_PAYMENT_METHOD, update, id=update.event_id
            )
        except WorkflowUpdateFailedError as exc:
            raise HTTPException(409, f"payment {payment_reference!r} is no longer being collected") from exc
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(404, f"no open journey for {payment_reference!r}") from exc
            raise
        return _PAGE.format(body=f"<h1>Thank you</h1><p>Card {escape(method.id)} was added; we are retrying the payment now.</p>")

    return router
