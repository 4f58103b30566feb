"""The ops write API: steer journeys, publish and roll out policies, read the audit log.

Mount with `app.include_router(build_router(services))`. Every route needs the bearer token;
every write is audited (`GET /api/audit`). The logic lives in `dunning.ops`, shared with the CLI.
"""

# No `from __future__ import annotations`: FastAPI must resolve the aliases local to build_router.
import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from dunning import ops
from dunning.policy import PolicyError
from dunning.store.records import AuditRecord

if TYPE_CHECKING:
    from dunning.api.app import Services

_KEY_PATTERN = r"^[A-Za-z0-9_\-:.]{1,200}$"
_REASON_EXAMPLE = "customer disputes the charge (ticket 4411)"


class ReasonBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": _REASON_EXAMPLE}]})

    reason: str = Field(min_length=1, max_length=ops.REASON_MAX, description="why; kept in the journey's timeline and the audit log")


class PublishBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "yaml": "name: default\nsteps:\n  - {id: retry-1, at: 1d, action: retry}\n",
                    "reason": "shorter first retry (experiment 12)",
                    "activate": True,
                    "rollout": {"stage": "retrying"},
                }
            ]
        },
    )

    yaml: str = Field(min_length=1, max_length=1_000_000, description="the policy document (YAML text)")
    reason: str = Field(min_length=1, max_length=ops.REASON_MAX, description="why; audited, and sent with the rollout")
    activate: bool = Field(default=False, description="make it the version new journeys start on")
    rollout: ops.RolloutSelection | None = Field(
        default=None, description="also move these open journeys onto it (`adopt_policy`)"
    )


class PublishResponse(BaseModel):
    policy: ops.PublishResult
    rollout: ops.RolloutReport | None = None


class PolicyList(BaseModel):
    active_version: str | None
    policies: list[ops.PolicySummary]


class AuditList(BaseModel):
    entries: list[AuditRecord]


def _http(error: ops.OpsError) -> HTTPException:
    return HTTPException(error.status_code, str(error))


def build_router(services: "Services") -> APIRouter:
    # Imported here: app.py imports this module while it is still loading.
    from dunning.api.app import _check_journey_id, require_token

    principal = require_token(services)
    router = APIRouter(prefix="/api", dependencies=[Depends(principal)])

    Actor = Annotated[
        str | None,
        Header(
            alias="X-Actor",
            min_length=1,
            max_length=100,
            description="who is acting, recorded in the audit log (default: the token's identity)",
            examples=["alice"],
        ),
    ]
    IdempotencyKey = Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=_KEY_PATTERN,
            description="repeat a request safely: the same key is applied (and audited) once",
            examples=["ticket-4411-retry"],
        ),
    ]
    Principal = Annotated[str, Depends(principal)]
    JourneyId = Annotated[str, Path(description="the journey id", examples=["dunning-in_123"])]

    def signal_route(action: ops.SignalAction, summary: str, description: str) -> None:
        @router.post(
            f"/journeys/{{journey_id}}/{action}",
            tags=["ops"],
            status_code=202,
            response_model=ops.ActionResult,
            summary=summary,
            description=description,
            responses={404: {"description": "no such journey"}, 409: {"description": "the journey already ended"}},
            name=f"{action}_journey",
        )
        async def handler(
            journey_id: JourneyId,
            body: Annotated[ReasonBody, Body()],
            who: Principal,
            actor: Actor = None,
            idempotency_key: IdempotencyKey = None,
        ) -> ops.ActionResult:
            _check_journey_id(journey_id)
            client = await services.temporal()
            try:
                return await ops.signal_journey(
                    client, services.store, journey_id, action,
                    reason=body.reason, actor=actor or who, idempotency_key=idempotency_key,
                )
            except ops.OpsError as error:
                raise _http(error) from error

    signal_route(
        "pause",
        "Pause a journey",
        "Stops retries and reminders (e.g. during a dispute) until `resume`; the remaining steps "
        "move later by the time paused. 202: the journey applies it at its next turn.",
    )
    signal_route("resume", "Resume a paused journey", "Continues a paused journey; its remaining steps shift by the time paused.")
    signal_route(
        "cancel",
        "Cancel a journey",
        "Ends the journey as `cancelled`: no more retries or reminders. Cannot be undone.",
    )

    @router.post(
        "/journeys/{journey_id}/retry-now",
        tags=["ops"],
        response_model=ops.RetryNowResult,
        summary="Retry a journey's payment now",
        description=(
            "Asks for a prompt retry within the card-network rules and returns the action the journey "
            "now plans (`next_action`, with why). Send an `Idempotency-Key` to make repeats safe: the "
            "key is the Temporal update id, so the same key retries once. 409 when the journey has ended."
        ),
        responses={404: {"description": "no such journey"}, 409: {"description": "the journey already ended"}},
    )
    async def retry_now(
        journey_id: JourneyId,
        body: Annotated[ReasonBody, Body()],
        who: Principal,
        actor: Actor = None,
        idempotency_key: IdempotencyKey = None,
    ) -> ops.RetryNowResult:
        _check_journey_id(journey_id)
        client = await services.temporal()
        try:
            return await ops.retry_now(
                client, services.store, journey_id,
                reason=body.reason, actor=actor or who, idempotency_key=idempotency_key,
            )
        except ops.OpsError as error:
            raise _http(error) from error

    @router.get(
        "/policies",
        tags=["policies"],
        response_model=PolicyList,
        summary="List published policy versions",
        description="Every version, newest first: who published it, when, its activations and which is active.",
    )
    async def list_policies() -> PolicyList:
        store = services.store
        policies = await asyncio.to_thread(ops.list_policies, store)
        active = next((p.version for p in policies if p.active), None)
        return PolicyList(active_version=active, policies=policies)

    @router.post(
        "/policies",
        tags=["policies"],
        response_model=PublishResponse,
        summary="Publish a policy (optionally activate it and roll it out)",
        description=(
            "Validates the YAML first (422 lists every problem with its line). The version is "
            "`<name>@<sha256[:12]>` of the text, so the same text twice is one version. `activate: true` "
            "makes it the version new journeys start on. `rollout` moves matching *open* journeys onto "
            "it with `adopt_policy` (`{\"all_open\": true}`, or `stage` and/or `segment`); the response "
            "says how many moved. Journeys not matched keep their version."
        ),
        responses={422: {"description": "invalid policy: `detail.problems` names line, field and fix"}},
    )
    async def publish_policy(body: PublishBody, who: Principal, actor: Actor = None) -> PublishResponse:
        acting = actor or who
        # Connect before publishing so an unreachable Temporal fails the whole request up front.
        client = await services.temporal() if body.rollout is not None else None
        try:
            published = await asyncio.to_thread(
                ops.publish_policy, services.store, body.yaml,
                actor=acting, reason=body.reason, activate=body.activate, source="request body",
            )
        except PolicyError as error:
            raise HTTPException(422, {"message": f"invalid policy ({error.source})", "problems": error.problems}) from error
        except ops.OpsError as error:
            raise _http(error) from error
        report = None
        if body.rollout is not None and client is not None:
            try:
                report = await ops.rollout(
                    client, services.store, published.version, body.rollout, reason=body.reason, actor=acting
                )
            except ops.OpsError as error:
                raise _http(error) from error
        return PublishResponse(policy=published, rollout=report)

    @router.get(
        "/audit",
        tags=["ops"],
        response_model=AuditList,
        summary="Read the audit log",
        description="Every ops write, oldest first: actor, action, target, reason and details.",
    )
    async def audit(
        target: Annotated[
            str | None,
            Query(max_length=255, description="a journey id or policy version", examples=["dunning-in_123"]),
        ] = None,
    ) -> dict[str, Any]:
        entries = await asyncio.to_thread(services.store.audit_entries, target)
        return {"entries": entries}

    return router
