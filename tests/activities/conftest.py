from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from activities.sandbox import SandboxGateway
from dunning.scenarios import Scenario
from dunning.store import Store

FAILED_AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC_URL = "http://dunning.test"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def sandbox(tmp_path: Path) -> SandboxGateway:
    return SandboxGateway(tmp_path / "sandbox.db", public_url=PUBLIC_URL)


@pytest.fixture
def make_scenario() -> Callable[..., Scenario]:
    """A scenario from JSON-shaped data, as a scenario file line would give it."""

    def make(
        payment_id: str = "in_1001",
        *,
        customer_id: str = "cus_1",
        methods: list[dict[str, Any]] | None = None,
        amount: int = 2500,
        **extra: Any,
    ) -> Scenario:
        data: dict[str, Any] = {
            "id": payment_id,
            "amount": amount,
            "currency": "usd",
            "failed_at": FAILED_AT.isoformat(),
            "customer": {"id": customer_id, "email": "ada@example.com"},
            "payment_methods": methods
            if methods is not None
            else [{"id": "pm_visa", "brand": "visa", "default": True, "fingerprint": "fp_visa"}],
            **extra,
        }
        return Scenario.model_validate(data)

    return make


# --- a Stripe-shaped HTTP server on loopback ------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]  # lower-case names


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # process the request, then close the connection without answering


Route = Reply | Callable[[Recorded], Reply]


class FakeStripe:
    """Answers with the JSON bodies a test queues per route and, like Stripe, stores the result
    of each POST/DELETE under its Idempotency-Key and replays it for a repeated key."""

    Reply = Reply  # for test modules, which cannot import this conftest

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Route]] = {}
        self.requests: list[Recorded] = []
        self.executed: list[Recorded] = []
        self._saved: dict[str, tuple[tuple[str, str, tuple], Reply]] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                recorded = Recorded(
                    method=self.command,
                    path=url.path,
                    query=dict(parse_qsl(url.query, keep_blank_values=True)),
                    form=dict(parse_qsl(raw, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                )
                reply = fake._reply(recorded)
                if reply.drop:
                    self.close_connection = True
                    return
                payload = json.dumps(reply.body or {}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Request-Id", f"req_{len(fake.requests)}")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def on(self, method: str, path: str, *replies: Route) -> None:
        """Queue replies for a route; the last one answers every later request."""
        self.routes[(method, path)] = list(replies)

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def _reply(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            key = recorded.headers.get("idempotency-key")
            signature = (recorded.method, recorded.path, tuple(sorted(recorded.form.items())))
            if key and recorded.method != "GET" and key in self._saved:
                saved_signature, saved = self._saved[key]
                if saved_signature != signature:
                    return Reply(400, {"error": {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                    }})
                return Reply(saved.status, saved.body, {**saved.headers, "Idempotent-Replayed": "true"})
            queue = self.routes.get((recorded.method, recorded.path))
            if not queue:
                return Reply(404, {"error": {
                    "type": "invalid_request_error",
                    "code": "resource_missing",
                    "message": f"Unrecognized request URL ({recorded.method}: {recorded.path}).",
                }})
            route = queue.pop(0) if len(queue) > 1 else queue[0]
            reply = route(recorded) if callable(route) else route
            self.executed.append(recorded)
            # Stripe saves every result of a request that started executing (not 409/429).
            if key and recorded.method != "GET" and reply.status not in (409, 429):
                self._saved[key] = (signature, Reply(reply.status, reply.body, reply.headers))
            return reply

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    yield fake
    fake.close()
