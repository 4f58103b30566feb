"""Shared fixtures: real Temporal servers from the PyPI wheels, an engine harness on real activities,
and store databases on SQLite and PostgreSQL (both always run; PostgreSQL is never skipped).

Heavy imports happen inside the fixtures so that pure unit tests load fast.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from dunning import search_attributes
from dunning.store import Store
from tests.support import ROOT, SERVER_STARTUP, binary


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary("temporal-test-server"),
        test_server_startup_timeout=SERVER_STARTUP,
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

POSTGRES_URL_ENV = "DUNNING_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def postgres_admin_url() -> URL:
    url = make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        error = None
    except OperationalError as exc:
        error = str(exc.orig).strip()
    finally:
        engine.dispose()
    if error is not None:  # failed outside the except block to keep the report short
        pytest.fail(
            f"\n\nPostgreSQL is NOT reachable at {url.render_as_string(hide_password=True)}:\n"
            f"    {error}\n\n"
            "The store tests run on SQLite AND PostgreSQL; the PostgreSQL half is never skipped.\n"
            "Start the local server (see `pg_lsclusters`), e.g.\n"
            "    sudo pg_ctlcluster 15 main start\n"
            f"or set {POSTGRES_URL_ENV} to a server where this user may CREATE DATABASE, e.g.\n"
            f"    {POSTGRES_URL_ENV}=postgresql+psycopg://user:pass@host:5432/postgres\n",
            pytrace=False,
        )
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty (unmigrated) database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'dunning.db'}"
        return
    admin_url: URL = request.getfixturevalue("postgres_admin_url")
    name = f"dunning_test_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    store.upgrade()
    yield store
    store.dispose()
