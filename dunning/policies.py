"""Publishing and activating policies: the versions journeys start on and keep."""

from __future__ import annotations

from pathlib import Path

from dunning.config import Settings
from dunning.policy import Policy, load_policy
from dunning.store import Store
from dunning.store.records import PolicyRecord

STARTUP = "startup"


def publish(store: Store, path: Path, published_by: str) -> tuple[Policy, PolicyRecord]:
    """Validate, then publish; the same text always yields the same version (idempotent)."""
    policy = load_policy(path)
    record = store.publish_policy(
        name=policy.name, yaml_text=path.read_text(encoding="utf-8"), published_by=published_by
    )
    return policy, record


def publish_configured_policy(store: Store, settings: Settings) -> PolicyRecord:
    """Publish DUNNING_POLICY; activate it the first time this text is seen.

    So editing the file changes what new journeys start on at the next start-up, while a version
    ops activated since (`dunning policy publish`) survives restarts of an unchanged file.
    """
    _, record = publish(store, settings.dunning_policy, published_by=STARTUP)
    if not store.policy_activations(record.version):
        store.activate_policy(record.version, activated_by=STARTUP, reason=f"DUNNING_POLICY={settings.dunning_policy}")
    return record


def policy_for_new_journeys(store: Store) -> PolicyRecord:
    active = store.active_policy()
    if active is None:
        raise LookupError("no policy is active: start the service once or run `dunning policy publish FILE`")
    return active
