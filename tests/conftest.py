"""Shared fixtures: real Temporal servers from the PyPI wheels and an engine harness on real activities.

Heavy imports happen inside the fixtures so that pure unit tests load fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dunning import search_attributes
from tests.support import ROOT, binary


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary("temporal-test-server"),
        data_converter=pydantic_data_converter,
    )
    # The time-skipping server cannot list search attributes, only add them.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={key.name: key.indexed_value_type for key in search_attributes.ALL},
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture
def default_policy_text() -> str:
    return (ROOT / "policies" / "default.yaml").read_text()


@pytest.fixture
def harness_factory():
    from tests.harness import make_harness

    return make_harness


@pytest.fixture
def harness(time_env, tmp_path, default_policy_text, harness_factory):
    return harness_factory(time_env.client, tmp_path, default_policy_text)
