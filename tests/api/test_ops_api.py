"""The ops write API against a real dev server, a worker and a real store: steering journeys,
retry-now idempotency, publishing and rolling out policies, the audit log, and auth."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from temporalio.client import Client

from dunning.api.app import create_app
from dunning.config import Settings
from dunning.journey import JourneyStatus, OpsAction
from dunning.scenarios import Scenario
from tests.support import ROOT, start_dev_server

TOKEN = "test-ops-token-5678"
DEFAULT = (ROOT / "policies" / "default.yaml").read_text()
# The default ladder plus a segment, so rollouts can select by segment.
SEGMENTED = DEFAULT + "\nsegments:\n  - name: high_value\n    match: {amount_min: 50000}\n"
WAIT = 20.0


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
async def engine(dev_env, harness_factory, tmp_path):
    harness = harness_factory(dev_env.client, tmp_path, SEGMENTED)
    settings = Settings(dunning_data_dir=tmp_path, temporal_address="unused", dunning_api_token=TOKEN)
    app = create_app(settings, harness.store, dev_env.client)
    async with harness.worker(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield harness, http
    await terminate_open(dev_env.client)


async def terminate_open(client: Client) -> None:
    """Each test starts from no open journeys: rollouts address every open one."""
    async for execution in client.list_workflows("ExecutionStatus = 'Running'"):
        await client.get_workflow_handle(execution.id).terminate("test over")

    async def none_open():
        return not [e async for e in client.list_workflows("ExecutionStatus = 'Running'")]

    await eventually(none_open, "visibility to show no open journeys")


def auth(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **headers}


def failure(name: str, *, amount: int = 990, failed_at: datetime | None = None) -> Scenario:
    return Scenario.model_validate(
        {
            "id": f"in_{name}",
            "amount": amount,
            "currency": "usd",
            "failed_at": (failed_at or datetime.now(timezone.utc)).isoformat(),
            "customer": {"id": f"cus_{name}", "email": "c@example.com", "timezone": "America/Chicago"},
            "payment_methods": [{"id": f"pm_{name}", "brand": "mastercard", "default": True}],
            "initial_decline": {"payment_method": f"pm_{name}", "decline_code": "generic_decline"},
        }
    )


async def eventually(check: Callable[[], Awaitable[object]], what: str, timeout: float = WAIT) -> object:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def status_of(http: httpx.AsyncClient, journey_id: str) -> JourneyStatus:
    async def ready():
        response = await http.get(f"/api/journeys/{journey_id}", headers=auth())
        return JourneyStatus.model_validate(response.json()) if response.status_code == 200 else None

    return await eventually(ready, f"{journey_id} to report its status")


async def audit_of(http: httpx.AsyncClient, target: str) -> list[dict]:
    response = await http.get("/api/audit", params={"target": target}, headers=auth())
    assert response.status_code == 200, response.text
    return response.json()["entries"]


async def test_every_ops_route_needs_the_token(engine):
    _, http = engine
    calls = [
        ("POST", "/api/journeys/dunning-in_x/pause", {"reason": "r"}),
        ("POST", "/api/journeys/dunning-in_x/resume", {"reason": "r"}),
        ("POST", "/api/journeys/dunning-in_x/cancel", {"reason": "r"}),
        ("POST", "/api/journeys/dunning-in_x/retry-now", {"reason": "r"}),
        ("GET", "/api/policies", None),
        ("POST", "/api/policies", {"yaml": DEFAULT, "reason": "r"}),
        ("GET", "/api/audit", None),
    ]
    for method, path, body in calls:
        missing = await http.request(method, path, json=body)
        wrong = await http.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert missing.status_code == wrong.status_code == 401, (path, missing.text)
        assert "Authorization: Bearer" in missing.json()["detail"]


async def test_pause_resume_cancel_apply_and_are_audited_once(engine):
    harness, http = engine
    handle = await harness.start(failure("steer"))
    await status_of(http, handle.id)

    paused = await http.post(f"/api/journeys/{handle.id}/pause", json={"reason": "dispute opened"}, headers=auth(**{"X-Actor": "alice"}))
    assert paused.status_code == 202, paused.text
    assert paused.json() | {"event_id": None} == {
        "journey_id": handle.id, "action": "pause", "event_id": None, "actor": "alice", "reason": "dispute opened", "replay": False,
    }

    async def is_paused():
        status = await status_of(http, handle.id)
        return status.paused and status.stage.value == "paused"

    await eventually(is_paused, "the journey to pause")

    resumed = await http.post(f"/api/journeys/{handle.id}/resume", json={"reason": "dispute won"}, headers=auth())
    assert resumed.status_code == 202, resumed.text

    async def is_resumed():
        return not (await status_of(http, handle.id)).paused

    await eventually(is_resumed, "the journey to resume")

    cancelled = await http.post(f"/api/journeys/{handle.id}/cancel", json={"reason": "customer left"}, headers=auth())
    assert cancelled.status_code == 202, cancelled.text
    final = await asyncio.wait_for(handle.result(), WAIT)
    assert final.stage.value == "cancelled" and final.end_reason == "customer left"

    entries = await audit_of(http, handle.id)
    assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
        ("journey.pause", "alice", "dispute opened"),
        ("journey.resume", "ops-token", "dispute won"),
        ("journey.cancel", "ops-token", "customer left"),
    ]
    assert entries[0]["details"]["event_id"] == paused.json()["event_id"]

    ended = await http.post(f"/api/journeys/{handle.id}/pause", json={"reason": "late"}, headers=auth())
    assert ended.status_code == 409
    assert "already ended (cancelled" in ended.json()["detail"]
    assert len(await audit_of(http, handle.id)) == 3, "a refused write is not audited"


async def test_signal_with_the_same_idempotency_key_is_applied_and_audited_once(engine):
    harness, http = engine
    handle = await harness.start(failure("pausekey"))
    await status_of(http, handle.id)
    headers = auth(**{"Idempotency-Key": "ticket-77"})
    first = await http.post(f"/api/journeys/{handle.id}/pause", json={"reason": "dispute"}, headers=headers)
    again = await http.post(f"/api/journeys/{handle.id}/pause", json={"reason": "dispute"}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert (first.json()["replay"], again.json()["replay"]) == (False, True)
    assert first.json()["event_id"] == again.json()["event_id"] == "ops:pause:ticket-77"
    assert len(await audit_of(http, handle.id)) == 1


async def test_unknown_and_malformed_journeys_are_clear_errors(engine):
    _, http = engine
    for action in ("pause", "resume", "cancel", "retry-now"):
        unknown = await http.post(f"/api/journeys/dunning-in_nope/{action}", json={"reason": "r"}, headers=auth())
        assert unknown.status_code == 404, unknown.text
        assert "no journey 'dunning-in_nope'" in unknown.json()["detail"]
        bad = await http.post(f"/api/journeys/bad id!/{action}", json={"reason": "r"}, headers=auth())
        assert bad.status_code == 400
        empty = await http.post(f"/api/journeys/dunning-in_nope/{action}", json={"reason": ""}, headers=auth())
        assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "reason"]
    assert await audit_of(http, "dunning-in_nope") == []


async def test_retry_now_with_one_idempotency_key_retries_once(time_env, harness, tmp_path):
    # Prompt retries wait 5 minutes after the request: the time-skipping server lets that pass.
    now = (await time_env.get_current_time()).astimezone(timezone.utc)
    settings = Settings(dunning_data_dir=tmp_path, temporal_address="unused", dunning_api_token=TOKEN)
    app = create_app(settings, harness.store, time_env.client)
    async with harness.worker(), httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        handle = await harness.start(failure("opsretry", failed_at=now))
        before = await status_of(http, handle.id)
        assert [a.number for a in before.attempts] == [0]

        headers = auth(**{"Idempotency-Key": "retry-ticket-9", "X-Actor": "bob"})
        first = await http.post(f"/api/journeys/{handle.id}/retry-now", json={"reason": "card topped up"}, headers=headers)
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["update_id"] == "retry-ticket-9" and body["replay"] is False
        assert body["next_action"]["kind"] == "attempt" and body["next_action"]["step_id"] == "prompt-1"
        assert "retry requested by ops: card topped up" in body["next_action"]["reason"]

        await time_env.sleep(timedelta(minutes=10))
        assert [a.number for a in (await status_of(http, handle.id)).attempts] == [0, 1]
        again = await http.post(f"/api/journeys/{handle.id}/retry-now", json={"reason": "card topped up"}, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json() == {**body, "replay": True}, "the server answers a repeated update id with the first outcome"
        await time_env.sleep(timedelta(minutes=10))

        status = await status_of(http, handle.id)
        assert [a.number for a in status.attempts] == [0, 1]
        assert harness.gateway.count_charges(handle.id) == 1
        assert sum("retry now requested" in e.text for e in status.timeline) == 1
        entries = await audit_of(http, handle.id)
        assert [(e["action"], e["actor"], e["details"]["idempotency_key"]) for e in entries] == [
            ("journey.retry_now", "bob", "retry-ticket-9")
        ]

        fresh = await http.post(f"/api/journeys/{handle.id}/retry-now", json={"reason": "again"}, headers=auth())
        assert fresh.status_code == 200 and fresh.json()["update_id"].startswith("retry-now-")

        await handle.signal("cancel", OpsAction(reason="done", event_id="evt_cancel_retry"))
        await asyncio.wait_for(handle.result(), WAIT)
        ended = await http.post(f"/api/journeys/{handle.id}/retry-now", json={"reason": "too late"}, headers=auth())
        assert ended.status_code == 409 and "already ended" in ended.json()["detail"]
        assert len(await audit_of(http, handle.id)) == 2


async def test_publish_validates_versions_and_activates(engine):
    harness, http = engine
    bad = DEFAULT.replace("{id: retry-2, at: 3d, window: 3d,", "{id: retry-2, at: 3 days, window: 3d,")
    rejected = await http.post("/api/policies", json={"yaml": bad, "reason": "try"}, headers=auth())
    assert rejected.status_code == 422
    problems = rejected.json()["detail"]["problems"]
    assert any("line 39" in p and "steps[2] (step retry-2).at" in p for p in problems), problems

    text = DEFAULT + "# tuned: a new text is a new version\n"
    first = await http.post("/api/policies", json={"yaml": text, "reason": "tuned", "activate": True}, headers=auth(**{"X-Actor": "carol"}))
    assert first.status_code == 200, first.text
    published = first.json()["policy"]
    assert published["created"] and published["activated"] and published["active_version"] == published["version"]
    assert published["published_by"] == "carol" and first.json()["rollout"] is None
    again = await http.post("/api/policies", json={"yaml": text, "reason": "tuned", "activate": True}, headers=auth())
    assert again.json()["policy"] | {"created": True, "activated": True} == published
    assert not again.json()["policy"]["created"] and not again.json()["policy"]["activated"]

    listed = (await http.get("/api/policies", headers=auth())).json()
    assert listed["active_version"] == published["version"]
    versions = {p["version"]: p for p in listed["policies"]}
    assert set(versions) == {harness.policy_version, published["version"]}
    assert versions[published["version"]]["active"] and not versions[harness.policy_version]["active"]
    assert [a["by"] for a in versions[published["version"]]["activations"]] == ["carol"]
    assert [(e["action"], e["actor"]) for e in await audit_of(http, published["version"])] == [
        ("policy.publish", "carol"),
        ("policy.activate", "carol"),
    ]

    both = await http.post(
        "/api/policies", json={"yaml": text, "reason": "r", "rollout": {"all_open": True, "stage": "paused"}}, headers=auth()
    )
    assert both.status_code == 422 and "not both" in both.text
    ended = await http.post("/api/policies", json={"yaml": text, "reason": "r", "rollout": {"stage": "recovered"}}, headers=auth())
    assert ended.status_code == 422 and "open journeys only" in ended.text


async def test_rollout_moves_exactly_the_matching_open_journeys(engine, dev_env):
    harness, http = engine
    small = await harness.start(failure("small"))
    big = await harness.start(failure("big", amount=90000))
    held = await harness.start(failure("held"))
    done = await harness.start(failure("done", amount=90000))
    for handle in (small, big, held, done):
        await status_of(http, handle.id)
    await http.post(f"/api/journeys/{held.id}/pause", json={"reason": "dispute"}, headers=auth())
    await http.post(f"/api/journeys/{done.id}/cancel", json={"reason": "gone"}, headers=auth())
    await asyncio.wait_for(done.result(), WAIT)

    async def visible():  # visibility and the projection are eventually consistent
        paused = [e.id async for e in dev_env.client.list_workflows("DunningStage = 'paused' AND ExecutionStatus = 'Running'")]
        rows = [harness.store.get_journey(h.id) for h in (small, big, held)]
        return paused == [held.id] and all(row and row.segment for row in rows)

    await eventually(visible, "visibility to show the paused journey")
    new_text = SEGMENTED + "# rolled out\n"

    by_stage = await http.post(
        "/api/policies", json={"yaml": new_text, "reason": "rollout 7", "rollout": {"stage": "paused"}}, headers=auth()
    )
    assert by_stage.status_code == 200, by_stage.text
    new_version = by_stage.json()["policy"]["version"]
    report = by_stage.json()["rollout"]
    assert (report["matched"], report["moved"], report["failed"]) == (1, [held.id], {})

    by_segment = await http.post(
        "/api/policies", json={"yaml": new_text, "reason": "rollout 8", "rollout": {"segment": "high_value"}}, headers=auth()
    )
    report = by_segment.json()["rollout"]
    assert (report["matched"], report["moved"], report["already_on_version"]) == (1, [big.id], [])

    async def versions():
        found = {h.id: (await status_of(http, h.id)).policy_version for h in (small, big, held)}
        return found if found[big.id] == found[held.id] == new_version else None

    found = await eventually(versions, "the moved journeys to adopt the new version")
    assert found == {small.id: harness.policy_version, big.id: new_version, held.id: new_version}
    timeline = (await status_of(http, held.id)).timeline
    assert any(e.kind == "policy" and "rollout 7" in e.text for e in timeline)

    async def projected():
        return all(harness.store.get_journey(h.id).policy_version == new_version for h in (big, held))

    await eventually(projected, "the projection to show the new version")
    everyone = await http.post(
        "/api/policies", json={"yaml": new_text, "reason": "rollout 9", "rollout": {"all_open": True}}, headers=auth()
    )
    report = everyone.json()["rollout"]
    assert report["moved"] == [small.id] and report["matched"] == 3
    assert sorted(report["already_on_version"]) == sorted([big.id, held.id])
    assert done.id not in report["moved"], "an ended journey is not open"

    assert [e["details"]["version"] for e in await audit_of(http, big.id)] == [new_version]
    rollouts = [e for e in await audit_of(http, new_version) if e["action"] == "policy.rollout"]
    assert [(e["reason"], e["details"]["moved"]) for e in rollouts] == [("rollout 7", 1), ("rollout 8", 1), ("rollout 9", 1)]


async def test_openapi_documents_the_ops_routes(engine):
    _, http = engine
    schema = (await http.get("/openapi.json")).json()
    for path in (
        "/api/journeys/{journey_id}/pause",
        "/api/journeys/{journey_id}/resume",
        "/api/journeys/{journey_id}/cancel",
        "/api/journeys/{journey_id}/retry-now",
        "/api/policies",
        "/api/audit",
    ):
        operations = schema["paths"][path]
        for operation in operations.values():
            assert operation.get("description"), (path, operation)
    retry = schema["paths"]["/api/journeys/{journey_id}/retry-now"]["post"]
    assert {p["name"] for p in retry["parameters"]} >= {"journey_id", "Idempotency-Key", "X-Actor"}
    assert schema["components"]["schemas"]["PublishBody"]["examples"][0]["rollout"] == {"stage": "retrying"}
    assert (await http.get("/docs")).status_code == 200
