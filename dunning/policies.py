"""Publishing policies to the store: the versions journeys start on and keep."""

from __future__ import annotations

from pathlib import Path

from dunning.config import Settings
from dunning.policy import Policy, load_policy
from dunning.store import Store
from dunning.store.records import PolicyRecord


def publish(store: Store, path: Path, published_by: str) -> tuple[Policy, PolicyRecord]:
    """Validate, then publish; the same text always yields the same version (idempotent)."""
    policy = load_policy(path)
    record = store.publish_policy(name=policy.name, yaml_text=path.read_text(encoding="utf-8"), published_by=published_by)
    return policy, record


def publish_configured_policy(store: Store, settings: Settings) -> PolicyRecord:
    """New journeys start on DUNNING_POLICY; publishing it at start-up keeps its version on record."""
    return publish(store, settings.dunning_policy, published_by="startup")[1]
