"""Which policy new journeys start on: DUNNING_POLICY at first sight, then whatever ops activate."""

from __future__ import annotations

import pytest

from dunning.config import Settings
from dunning.policies import policy_for_new_journeys, publish_configured_policy
from dunning.store import RecordNotFound, Store
from tests.support import ROOT


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    return store


def settings(tmp_path, policy) -> Settings:
    return Settings(dunning_data_dir=tmp_path, dunning_policy=policy)


def test_first_start_activates_the_configured_policy(store, tmp_path):
    with pytest.raises(LookupError, match="no policy is active"):
        policy_for_new_journeys(store)
    record = publish_configured_policy(store, settings(tmp_path, ROOT / "policies" / "default.yaml"))
    assert policy_for_new_journeys(store).version == record.version
    assert [a.activated_by for a in store.policy_activations()] == ["startup"]


def test_an_ops_activation_survives_a_restart_with_the_same_file(store, tmp_path):
    default = settings(tmp_path, ROOT / "policies" / "default.yaml")
    publish_configured_policy(store, default)
    demo = store.publish_policy(name="demo", yaml_text=(ROOT / "policies" / "demo.yaml").read_text(), published_by="ana")
    store.activate_policy(demo.version, activated_by="ana", reason="try the compressed ladder")
    publish_configured_policy(store, default)  # restart
    assert policy_for_new_journeys(store).version == demo.version


def test_an_edited_file_is_activated_at_the_next_start(store, tmp_path):
    publish_configured_policy(store, settings(tmp_path, ROOT / "policies" / "default.yaml"))
    edited = tmp_path / "default.yaml"
    edited.write_text((ROOT / "policies" / "default.yaml").read_text() + "\n# tuned\n")
    record = publish_configured_policy(store, settings(tmp_path, edited))
    assert policy_for_new_journeys(store).version == record.version
    assert len(store.policy_activations()) == 2


def test_only_published_versions_can_be_activated(store):
    with pytest.raises(RecordNotFound, match="not published"):
        store.activate_policy("default@000000000000", activated_by="ana")
