"""Request body size limits: refuse big bodies before any route reads them (413)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLarge(HTTPException):
    """Raised from receive(): an HTTPException, so routes reading the body answer 413, not 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit, None))


class BodySizeLimit:
    """ASGI middleware: `limit` bytes per request body, or a larger limit for some path prefixes.

    Checks Content-Length up front and counts the bytes of chunked bodies as they arrive.
    """

    def __init__(self, app: ASGIApp, *, limit: int, prefixes: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.prefixes = dict(prefixes or {})

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.prefixes.items():
            if path.startswith(prefix):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length header")
                return
            if length > limit:
                await _reply(send, 413, _message(limit, length))
                return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge as exc:
            if started:  # too late for a clean answer; the server closes the connection
                raise
            await _reply(send, 413, exc.detail)


def _message(limit: int, length: int | None) -> str:
    size = f"{length} bytes" if length is not None else "more bytes"
    return f"request body too large: {size}, the limit is {limit} bytes"


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
