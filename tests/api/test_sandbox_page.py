"""The sandbox's hosted payment page shows the amount in the currency's own digits."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from dunning.api.sandbox_page import build_router
from dunning.enums import Stage
from dunning.models import journey_id_for
from dunning.store.records import JourneyRecord

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


async def page_for(amount: int, currency: str) -> str:
    journey = JourneyRecord(
        journey_id=journey_id_for("in_page"),
        payment_reference="in_page",
        payment_kind="invoice",
        customer_id="cus_page",
        stage=Stage.retrying,
        amount=amount,
        currency=currency,
        started_at=T0,
        updated_at=T0,
    )
    services = SimpleNamespace(store=SimpleNamespace(get_journey={journey.journey_id: journey}.get))
    app = FastAPI()
    app.include_router(build_router(services, gateway=None))  # the page only reads the store
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/sandbox/pay/in_page")
    assert response.status_code == 200
    return response.text


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [(1200, "jpy", "¥1,200"), (1999, "usd", "$19.99"), (12345, "kwd", "KWD12.345")],
)
async def test_amount_in_the_currency_s_own_digits(amount: int, currency: str, shown: str) -> None:
    assert f"Your payment of {shown} did not go through" in await page_for(amount, currency)
