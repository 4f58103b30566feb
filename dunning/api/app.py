"""The HTTP service: health, the ops API and (later) webhooks and the dashboard."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from activities.payments import build_gateway
from dunning import search_attributes
from dunning.api import codec_routes, messaging_routes
from dunning.api import ops as ops_routes
from dunning.api import webhooks
from dunning.api import dashboard, metrics, sandbox_page
from dunning.config import Settings, api_token
from dunning.enums import Stage
from dunning.journey import QUERY_STATUS, JourneyStatus
from dunning.ops import visibility_query
from dunning.store import Store
from dunning.temporal import connect

HEALTH_TIMEOUT = 2.0
_JOURNEY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-:.")


@dataclass
class Services:
    settings: Settings
    store: Store
    token: str
    client: Client | None = None

    async def temporal(self) -> Client:
        if self.client is None:
            try:
                self.client = await asyncio.wait_for(connect(self.settings), HEALTH_TIMEOUT)
            except (RuntimeError, asyncio.TimeoutError, OSError) as exc:
                raise HTTPException(503, f"Temporal at {self.settings.temporal_target} is unreachable: {exc}") from exc
        return self.client


def create_app(settings: Settings, store: Store, client: Client | None = None) -> FastAPI:
    services = Services(settings=settings, store=store, token=api_token(settings), client=client)

    app = FastAPI(
        title="Dunning engine",
        description="Ops API for the open dunning and collections engine.",
        version="0.1.0",
    )
    app.state.services = services
    app.include_router(_health_router(services))
    app.include_router(_journeys_router(services))
    app.include_router(messaging_routes.build_router(lambda: services.store))
    app.include_router(ops_routes.build_router(services))
    webhooks.install(app, services)  # POST /webhooks/stripe
    app.include_router(dashboard.build_router(services))  # /, /journeys/{id}, /login, /api/reports
    app.include_router(metrics.build_router(services))  # /metrics
    codec_routes.mount(app, settings, services.token)  # + body size limits
    if not settings.stripe_api_key:  # the sandbox's hosted page, where reminder links lead
        app.include_router(sandbox_page.build_router(services, build_gateway(settings)))
    return app


def _health_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", tags=["health"])
    async def healthz():
        client = await services.temporal()
        try:
            await asyncio.wait_for(client.service_client.check_health(), HEALTH_TIMEOUT)
        except (RPCError, asyncio.TimeoutError) as exc:
            raise HTTPException(503, f"Temporal at {services.settings.temporal_target} is unhealthy: {exc}") from exc
        return {"status": "ok", "temporal": services.settings.temporal_target}

    return router


_bearer = HTTPBearer(auto_error=False)


def require_token(services: Services):
    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                "missing bearer token: send `Authorization: Bearer <DUNNING_API_TOKEN>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.credentials, services.token):
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
        return "ops-token"

    return check


def _journeys_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["journeys"], dependencies=[Depends(require_token(services))])

    @router.get("/journeys/{journey_id}", response_model=JourneyStatus)
    async def get_journey(journey_id: str):
        _check_journey_id(journey_id)
        client = await services.temporal()
        handle = client.get_workflow_handle(journey_id)
        try:
            status = await handle.query(QUERY_STATUS, result_type=JourneyStatus)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(404, f"no journey {journey_id!r}") from exc
            raise HTTPException(503, f"could not query journey {journey_id!r}: {exc.message}") from exc
        if status is None:
            raise HTTPException(409, f"journey {journey_id!r} is starting; try again in a moment")
        return status

    @router.get("/journeys")
    async def list_journeys(
        stage: Annotated[Stage | None, Query(description="e.g. retrying, recovered")] = None,
        customer: Annotated[str | None, Query(max_length=255, description="customer id, e.g. cus_123")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ):
        client = await services.temporal()
        journeys = []
        async for execution in client.list_workflows(visibility_query(stage=stage, customer=customer), limit=limit):
            attributes = execution.typed_search_attributes
            journeys.append(
                {
                    "journey_id": execution.id,
                    "stage": attributes.get(search_attributes.STAGE),
                    "customer_id": attributes.get(search_attributes.CUSTOMER_ID),
                    "amount_due": attributes.get(search_attributes.AMOUNT_DUE),
                    "currency": attributes.get(search_attributes.CURRENCY),
                    "decline_class": attributes.get(search_attributes.DECLINE_CLASS),
                    "running": execution.status == WorkflowExecutionStatus.RUNNING,
                    "started_at": execution.start_time,
                    "closed_at": execution.close_time,
                }
            )
        return {"journeys": journeys}

    return router


def _check_journey_id(journey_id: str) -> None:
    if len(journey_id) > 255 or not set(journey_id) <= _JOURNEY_ID_CHARS:
        raise HTTPException(
            400, "journey ids look like dunning-in_123 or dunning-pi_123 (letters, digits, _-:.)"
        )
