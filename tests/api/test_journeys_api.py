"""The ops read API against a real dev server: auth, health, one journey, journeys by customer and stage."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timezone

import httpx
import pytest

from dunning.api.app import create_app
from dunning.config import Settings
from dunning.journey import OpsAction
from dunning.scenarios import Scenario
from tests.support import ROOT, start_dev_server

TOKEN = "test-token-1234"


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


def settings_for(tmp_path, target: str) -> Settings:
    return Settings(dunning_data_dir=tmp_path, temporal_address=target, dunning_api_token=TOKEN)


def http(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def failure(name: str, customer: str) -> Scenario:
    return Scenario.model_validate(
        {
            "id": f"in_{name}",
            "amount": 990,
            "currency": "usd",
            "failed_at": datetime.now(timezone.utc).isoformat(),
            "customer": {"id": customer, "email": "c@example.com", "timezone": "America/Chicago"},
            "payment_methods": [{"id": f"pm_{name}", "brand": "visa", "default": True}],
            "initial_decline": {"payment_method": f"pm_{name}", "decline_code": "insufficient_funds"},
        }
    )


async def test_healthz_is_200_with_temporal_and_503_without(dev_env, harness_factory, tmp_path):
    harness = harness_factory(dev_env.client, tmp_path, (ROOT / "policies" / "default.yaml").read_text())
    async with http(create_app(settings_for(tmp_path, "unused"), harness.store, dev_env.client)) as client:
        response = await client.get("/healthz")
        assert response.status_code == 200 and response.json()["status"] == "ok"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    async with http(create_app(settings_for(tmp_path, closed), harness.store)) as client:
        response = await client.get("/healthz")
        assert response.status_code == 503
        assert closed in response.json()["detail"]


async def test_api_requires_the_bearer_token(dev_env, harness_factory, tmp_path):
    harness = harness_factory(dev_env.client, tmp_path, (ROOT / "policies" / "default.yaml").read_text())
    app = create_app(settings_for(tmp_path, "unused"), harness.store, dev_env.client)
    async with http(app) as client:
        missing = await client.get("/api/journeys")
        wrong = await client.get("/api/journeys", headers={"Authorization": "Bearer nope"})
        assert missing.status_code == wrong.status_code == 401
        assert "Authorization: Bearer" in missing.json()["detail"]
        assert (await client.get("/api/journeys/dunning-in_unknown", headers=auth())).status_code == 404
        assert (await client.get("/api/journeys/bad id!", headers=auth())).status_code == 400


async def test_journey_status_and_listing_by_customer_and_stage(dev_env, harness_factory, tmp_path):
    harness = harness_factory(dev_env.client, tmp_path, (ROOT / "policies" / "default.yaml").read_text())
    app = create_app(settings_for(tmp_path, "unused"), harness.store, dev_env.client)
    async with harness.worker(), http(app) as client:
        first = await harness.start(failure("api1", "cus_api"))
        await harness.start(failure("api2", "cus_api"))
        await harness.start(failure("api3", "cus_other"))
        for _ in range(50):
            response = await client.get(f"/api/journeys/{first.id}", headers=auth())
            if response.status_code == 200:
                break
            await asyncio.sleep(0.2)
        body = response.json()
        assert body["journey_id"] == first.id and body["stage"] == "retrying"
        assert body["next_action"]["step_id"] in {"notice", "retry-1"}
        assert body["attempts"][0]["decline"]["decline_code"] == "insufficient_funds"

        for _ in range(50):  # visibility is eventually consistent
            listed = (await client.get("/api/journeys", params={"customer": "cus_api"}, headers=auth())).json()
            if len(listed["journeys"]) == 2:
                break
            await asyncio.sleep(0.2)
        assert sorted(j["journey_id"] for j in listed["journeys"]) == ["dunning-in_api1", "dunning-in_api2"]
        assert all(j["customer_id"] == "cus_api" and j["amount_due"] == 990 for j in listed["journeys"])

        await first.signal("cancel", OpsAction(reason="test", event_id="evt_c"))
        await first.result()
        for _ in range(50):
            cancelled = (await client.get("/api/journeys", params={"stage": "cancelled"}, headers=auth())).json()
            if [j["journey_id"] for j in cancelled["journeys"]] == [first.id]:
                break
            await asyncio.sleep(0.2)
        assert [j["journey_id"] for j in cancelled["journeys"]] == [first.id]
        quoted = await client.get("/api/journeys", params={"customer": "x' OR '1'='1"}, headers=auth())
        assert quoted.status_code == 200 and quoted.json() == {"journeys": []}
    for handle_id in ("dunning-in_api2", "dunning-in_api3"):
        await dev_env.client.get_workflow_handle(handle_id).terminate("test over")
