"""`dunning policy publish | list`: versions in the real store, activation, and rollouts to open
journeys on a real dev server."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from dunning.journey import QUERY_STATUS, JourneyStatus, OpsAction
from dunning.store import Store
from tests.cli import test_journeys_cli as journeys_cli
from tests.cli.test_journeys_cli import DEFAULT, cli_env, eventually, failure, invoke, settled, target_of

# The same fixtures (this module gets its own dev server and engine).
dev_env = journeys_cli.dev_env
engine = journeys_cli.engine


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def migrated_store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    return store


async def test_publishing_the_same_text_twice_is_one_version(tmp_path):
    store = migrated_store(tmp_path)
    policy = tmp_path / "tuned.yaml"
    policy.write_text(DEFAULT + "# tuned\n")
    env = cli_env(tmp_path, closed_port())  # no rollout: Temporal is not needed

    first = await invoke(["policy", "publish", str(policy), "--reason", "tuned retries"], env)
    assert first.exit_code == 0, first.output
    (record,) = store.list_policies()
    assert f"published {record.version} by dana" in first.stdout
    second = await invoke(["policy", "publish", str(policy), "--reason", "tuned retries"], env)
    assert second.exit_code == 0, second.output
    assert f"{record.version} is already published (same text, by dana); no new version" in second.stdout
    assert [p.version for p in store.list_policies()] == [record.version]
    assert store.active_policy() is None

    activated = await invoke(["policy", "publish", str(policy), "--reason", "go live", "--activate", "--actor", "erin"], env)
    assert activated.exit_code == 0, activated.output
    assert f"activated: new journeys start on {record.version}" in activated.stdout
    assert store.active_policy().version == record.version
    repeat = await invoke(["policy", "publish", str(policy), "--reason", "go live", "--activate"], env)
    assert "was already the version new journeys start on" in repeat.stdout
    assert len(store.policy_activations(record.version)) == 1
    assert [(e.action, e.actor, e.reason) for e in store.audit_entries(record.version)] == [
        ("policy.publish", "dana", "tuned retries"),
        ("policy.activate", "erin", "go live"),
    ]

    listed = await invoke(["policy", "list", "--json"], env)
    assert listed.exit_code == 0, listed.output
    (summary,) = json.loads(listed.stdout)["policies"]
    assert summary | {"published_at": None} == {
        "version": record.version, "name": "default", "published_by": "dana", "published_at": None, "active": True,
        "activations": [{"at": summary["activations"][0]["at"], "by": "erin", "reason": "go live"}],
    }
    table = await invoke(["policy", "list"], env)
    assert table.exit_code == 0 and record.version in table.stdout and "* = new journeys start on it" in table.stdout


async def test_an_invalid_policy_is_not_published(tmp_path):
    store = migrated_store(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFAULT.replace("{id: retry-2, at: 3d, window: 3d,", "{id: retry-2, at: 3 days, window: 3d,"))
    env = cli_env(tmp_path, closed_port())
    result = await invoke(["policy", "publish", str(bad), "--reason", "oops"], env)
    assert result.exit_code == 1
    assert "invalid policy, nothing published" in result.stderr
    assert "line 39" in result.stderr and "steps[2] (step retry-2).at" in result.stderr
    missing = await invoke(["policy", "publish", str(tmp_path / "nope.yaml"), "--reason", "oops"], env)
    assert missing.exit_code == 1 and "cannot read" in missing.stderr and "nope.yaml" in missing.stderr
    both = await invoke(
        ["policy", "publish", str(bad), "--reason", "r", "--rollout-all-open", "--rollout-stage", "paused"], env
    )
    assert both.exit_code == 2 and "cannot be combined" in both.stderr
    assert store.list_policies() == [] and store.audit_entries() == []


async def test_rollout_moves_exactly_the_matching_open_journeys(engine, dev_env, tmp_path):
    running = await engine.start(failure("rolla"))
    held = await engine.start(failure("rollb"))
    for handle in (running, held):
        await settled(handle)
    await held.signal("pause", OpsAction(reason="dispute", event_id="evt_hold"))

    async def visible():
        paused = [e.id async for e in dev_env.client.list_workflows("DunningStage = 'paused' AND ExecutionStatus = 'Running'")]
        return paused == [held.id]

    await eventually(visible, "visibility to show the paused journey")
    policy = tmp_path / "next.yaml"
    policy.write_text(DEFAULT + "# next\n")
    env = cli_env(tmp_path, target_of(dev_env))

    staged = await invoke(["policy", "publish", str(policy), "--reason", "rollout 12", "--rollout-stage", "paused"], env)
    assert staged.exit_code == 0, staged.output
    version = next(p.version for p in engine.store.list_policies() if p.version != engine.policy_version)
    assert f"rollout to {version} (open journeys with stage=paused): matched 1, moved 1, already on it 0" in staged.stdout
    assert "moving journeys" in staged.stderr and "1/1" in staged.stderr

    async def versions():
        found = {h.id: (await h.query(QUERY_STATUS, result_type=JourneyStatus)).policy_version for h in (running, held)}
        return found if found[held.id] == version else None

    assert await eventually(versions, "the paused journey to adopt the version") == {
        running.id: engine.policy_version,
        held.id: version,
    }

    async def projected():
        return engine.store.get_journey(held.id).policy_version == version

    await eventually(projected, "the projection to show the new version")
    everyone = await invoke(["policy", "publish", str(policy), "--reason", "rollout 13", "--rollout-all-open"], env)
    assert everyone.exit_code == 0, everyone.output
    assert "already published" in everyone.stdout
    assert "(all open journeys): matched 2, moved 1, already on it 1" in everyone.stdout
    async def both_moved():
        status = await running.query(QUERY_STATUS, result_type=JourneyStatus)
        return status.policy_version == version

    await eventually(both_moved, "the running journey to adopt the version")
    held_status = await held.query(QUERY_STATUS, result_type=JourneyStatus)
    assert sum(e.kind == "policy" for e in held_status.timeline) == 1, "already on it: not moved twice"
    assert [(e.action, e.reason) for e in engine.store.audit_entries(running.id)] == [("journey.adopt_policy", "rollout 13")]
    assert [(e.action, e.details["moved"]) for e in engine.store.audit_entries(version) if e.action == "policy.rollout"] == [
        ("policy.rollout", 1),
        ("policy.rollout", 1),
    ]
