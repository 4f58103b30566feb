"""Remote codec endpoints (Temporal's codec server protocol) for the Temporal UI and CLI.

POST /codec/encode and /codec/decode take and return `Payloads` as protobuf JSON. They need the
ops token (CLI: `--codec-endpoint http://host:8000/codec --codec-auth "Bearer $TOKEN"`) or the
dashboard's session cookie (the Temporal UI); the browser preflight for the UI's origin is
answered by `CodecCORS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads
from temporalio.converter import PayloadCodec

from dunning.api.dashboard import authorized
from dunning.api.limits import BodySizeLimit
from dunning.codec import CodecError, codec_for
from dunning.config import Settings

PREFIX = "/codec"


def build_router(codec_provider: Callable[[], PayloadCodec | None], dependencies: Sequence[Any]) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["codec"], dependencies=list(dependencies))

    async def run(request: Request, direction: str) -> Response:
        try:
            codec = codec_provider()
        except CodecError as exc:  # unusable key configuration
            raise HTTPException(503, f"payload encryption is misconfigured: {exc}") from exc
        if codec is None:
            raise HTTPException(503, "payload encryption is not configured (DUNNING_CODEC_KEYS)")
        try:
            payloads = json_format.Parse(await request.body(), Payloads(), ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise HTTPException(400, f"expected Payloads as protobuf JSON: {exc}") from exc
        try:
            if direction == "encode":
                result = await codec.encode(payloads.payloads)
            else:
                result = await codec.decode(payloads.payloads)
        except CodecError as exc:
            raise HTTPException(422, str(exc)) from exc
        return Response(json_format.MessageToJson(Payloads(payloads=result)), media_type="application/json")

    @router.post("/encode")
    async def encode(request: Request) -> Response:
        return await run(request, "encode")

    @router.post("/decode")
    async def decode(request: Request) -> Response:
        return await run(request, "decode")

    return router


class CodecCORS:
    """CORS for /codec only: the Temporal UI calls it from the browser; the rest of the API stays same-origin."""

    def __init__(self, app: ASGIApp, *, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Namespace"],
            allow_credentials=True,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith(PREFIX + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def ui_origins(settings_origins: str | None, ui_port: int) -> list[str]:
    if settings_origins:
        return [origin.strip().rstrip("/") for origin in settings_origins.split(",") if origin.strip()]
    return [f"http://127.0.0.1:{ui_port}", f"http://localhost:{ui_port}"]


def lazy_codec(settings: Settings) -> Callable[[], PayloadCodec | None]:
    """The service's codec, built on first use (the same keys the worker and CLI resolve)."""

    @functools.cache  # a CodecError is not cached: each request reports it
    def provider() -> PayloadCodec | None:
        return codec_for(settings)

    return provider


def codec_auth(token: str) -> Callable[[Request], None]:
    """The ops token as a bearer header (CLI, proxies) or the dashboard's session cookie: the
    Temporal UI sends the latter when TEMPORAL_CODEC_INCLUDE_CREDENTIALS is on and the operator
    has signed in to the dashboard (same site)."""

    def check(request: Request) -> None:
        if not authorized(request, token):
            raise HTTPException(
                401,
                "missing bearer token: send `Authorization: Bearer <DUNNING_API_TOKEN>` or sign in at /login",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def mount(app: FastAPI, settings: Settings, token: str) -> None:
    """The /codec routes (ops token or dashboard session), their CORS, and the body limits of the whole app."""
    app.include_router(build_router(lazy_codec(settings), [Depends(codec_auth(token))]))
    app.add_middleware(CodecCORS, origins=ui_origins(settings.dunning_codec_cors_origins, settings.temporal_ui_port))
    app.add_middleware(
        BodySizeLimit,
        limit=settings.dunning_max_body_bytes,
        prefixes={PREFIX + "/": settings.dunning_codec_max_body_bytes},
    )
