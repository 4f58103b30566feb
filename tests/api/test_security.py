"""Security of the HTTP service: every route needs the ops token unless it is on the short public list,
bodies are size-limited, secrets come from env or files and never reach a log."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from dunning.api.app import create_app
from dunning.codec import CodecKey, EncryptionCodec
from dunning.config import SECRET_VARIABLES, Settings, export_file_secrets
from dunning.store import Store
from tests.support import ROOT

TOKEN = "ops-token-for-security-tests"

# Public on purpose: health for probes, provider webhooks (they carry their own signatures),
# customers' unsubscribe links (signed tokens), the sandbox's stand-in for Stripe's hosted payment
# page (mounted only without Stripe), the dashboard's sign-in form, and the static API description.
PUBLIC = [
    r"^/healthz$",
    r"^/webhooks/",
    r"^/unsubscribe/",
    r"^/sandbox/pay/",
    r"^/login$",
    r"^/logout$",
    r"^/openapi\.json$",
    r"^/docs(/oauth2-redirect)?$",
    r"^/redoc$",
]


def denied(response) -> bool:
    """401, or for the dashboard's HTML pages a redirect to the sign-in form."""
    if response.status_code == 401:
        return response.headers.get("www-authenticate") == "Bearer"
    return response.status_code == 303 and response.headers["location"].startswith("/login?")


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    return store


def make_app(tmp_path, store, **overrides):
    # A closed port: nothing here may depend on reaching Temporal.
    settings = Settings(
        dunning_data_dir=tmp_path, temporal_address=f"127.0.0.1:{free_port()}", dunning_api_token=TOKEN, **overrides
    )
    return create_app(settings, store)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def routes(app) -> list[tuple[str, str]]:
    found = []
    for context in iter_route_contexts(app.routes):
        for method in sorted(getattr(context, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, context.path))
    return found


def concrete(path: str) -> str:
    return re.sub(r"\{[^}:]+(:path)?\}", "x1", path)


async def test_every_route_but_the_public_ones_requires_the_ops_token(tmp_path, store):
    app = make_app(tmp_path, store)
    protected = [(m, p) for m, p in routes(app) if not any(re.search(rule, p) for rule in PUBLIC)]
    paths = {p for _, p in protected}
    assert {"/api/journeys", "/api/journeys/{journey_id}", "/codec/encode", "/codec/decode"} <= paths
    async with http(app) as client:
        for method, path in protected:
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
                response = await client.request(method, concrete(path), headers=headers, json={})
                assert denied(response), f"{method} {path} with {headers or 'no token'}: {response.status_code}"


async def test_the_public_list_holds_only_what_exists(tmp_path, store):
    app = make_app(tmp_path, store)
    paths = [p for _, p in routes(app)]
    for rule in (r"^/healthz$", r"^/webhooks/", r"^/unsubscribe/", r"^/sandbox/pay/", r"^/login$"):
        assert any(re.search(rule, p) for p in paths), f"no route matches public rule {rule}"
    with_stripe = make_app(tmp_path, store, stripe_api_key="sk_test_x", stripe_webhook_secret="whsec_x")
    assert not [p for _, p in routes(with_stripe) if p.startswith("/sandbox/")], "the sandbox page is sandbox-only"


async def test_codec_accepts_the_dashboard_session_for_the_temporal_ui(tmp_path, store):
    import time

    from dunning.api.dashboard import SESSION_COOKIE, session_value

    app = make_app(tmp_path, store, dunning_codec_keys="k1:" + base64.b64encode(bytes(32)).decode())
    async with http(app) as client:
        good = session_value(TOKEN, int(time.time()) + 600)
        forged = session_value("another-token", int(time.time()) + 600)
        expired = session_value(TOKEN, int(time.time()) - 1)
        client.cookies.set(SESSION_COOKIE, good)
        assert (await client.post("/codec/decode", json={"payloads": []})).status_code == 200
        for cookie in (forged, expired):
            client.cookies.set(SESSION_COOKIE, cookie)
            assert (await client.post("/codec/decode", json={"payloads": []})).status_code == 401


async def test_codec_endpoint_decodes_with_the_token_and_answers_the_ui_preflight(tmp_path, store):
    key = CodecKey("k1", bytes(32))
    app = make_app(tmp_path, store, dunning_codec_keys=f"k1:{base64.b64encode(key.key).decode()}", temporal_ui_port=8233)
    from temporalio.api.common.v1 import Payload

    [sealed] = await EncryptionCodec([key]).encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"a@b.co"')])
    body = {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in sealed.metadata.items()},
                "data": base64.b64encode(sealed.data).decode(),
            }
        ]
    }
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Namespace": "default"}
    async with http(app) as client:
        decoded = await client.post("/codec/decode", json=body, headers=auth)
        assert decoded.status_code == 200, decoded.text
        [payload] = decoded.json()["payloads"]
        assert base64.b64decode(payload["data"]) == b'"a@b.co"'
        encoded = await client.post("/codec/encode", json=decoded.json(), headers=auth)
        assert encoded.status_code == 200
        assert base64.b64decode(encoded.json()["payloads"][0]["metadata"]["encryption-key-id"]) == b"k1"

        preflight = await client.options(
            "/codec/decode",
            headers={
                "Origin": "http://127.0.0.1:8233",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
        other = await client.options(
            "/codec/decode", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in other.headers
        api = await client.get("/api/journeys", headers={"Origin": "http://127.0.0.1:8233"})
        assert "access-control-allow-origin" not in api.headers, "CORS is for /codec only"


async def test_bodies_over_the_limit_get_413_with_a_clear_message(tmp_path, store):
    app = make_app(tmp_path, store, dunning_codec_keys="k1:" + base64.b64encode(bytes(32)).decode())
    async with http(app) as client:
        response = await client.post("/webhooks/twilio", content=b"x" * (1024 * 1024 + 1))
        assert response.status_code == 413
        assert response.json()["detail"] == "request body too large: 1048577 bytes, the limit is 1048576 bytes"
        at_limit = await client.post("/webhooks/twilio", content=b"x" * (1024 * 1024))
        assert at_limit.status_code != 413

        # The codec endpoint takes bigger batches (the UI decodes a whole history page at once).
        auth = {"Authorization": f"Bearer {TOKEN}"}
        big = b'{"payloads": []}' + b" " * (2 * 1024 * 1024)
        assert (await client.post("/codec/decode", content=big, headers=auth)).status_code == 200


async def test_chunked_bodies_are_counted(tmp_path, store):
    app = make_app(tmp_path, store, dunning_codec_keys="k1:" + base64.b64encode(bytes(32)).decode(), dunning_codec_max_body_bytes=1000)

    async def chunks():
        yield b'{"payloads": ['
        for _ in range(20):
            yield b" " * 100
        yield b"]}"

    async with http(app) as client:
        response = await client.post("/codec/decode", content=chunks(), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 413
    assert "the limit is 1000 bytes" in response.json()["detail"]


# -- secrets ---------------------------------------------------------------------------------------


def test_every_secret_can_come_from_a_file(tmp_path):
    env = {}
    for name in SECRET_VARIABLES:
        path = tmp_path / name.lower()
        path.write_text(f"value-of-{name}\n")
        env[f"{name}_FILE"] = str(path)
    settings = Settings(**{k.lower(): v for k, v in env.items()})
    for name in SECRET_VARIABLES:
        assert getattr(settings, name.lower()) == f"value-of-{name}"
    export_file_secrets(settings, env)
    assert all(env[name] == f"value-of-{name}" for name in SECRET_VARIABLES), "modules reading os.environ see them"
    assert "value-of-" not in repr(settings)


def test_secret_file_mistakes_are_refused(tmp_path):
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "token").write_text("t")
    with pytest.raises(ValueError, match="not both"):
        Settings(dunning_api_token="x", dunning_api_token_file=tmp_path / "token")
    with pytest.raises(ValueError, match="is empty"):
        Settings(stripe_api_key_file=tmp_path / "empty")
    with pytest.raises(ValueError, match="cannot read"):
        Settings(twilio_auth_token_file=tmp_path / "missing")


def test_startup_and_requests_log_no_secret(tmp_path):
    secrets = {name: f"s3cr3t-{name.lower().replace('_', '-')}-7f9a" for name in SECRET_VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES and not k.endswith("_FILE")}
    for name in ("DUNNING_API_TOKEN", "TWILIO_AUTH_TOKEN", "STRIPE_WEBHOOK_SECRET"):  # some from files
        (tmp_path / name).write_text(secrets[name])
        env[f"{name}_FILE"] = str(tmp_path / name)
    for name in ("STRIPE_API_KEY", "SENDGRID_API_KEY", "TEMPORAL_API_KEY"):
        env[name] = secrets[name]
    codec_key = base64.b64encode(b"K" * 32).decode()
    port = free_port()
    env.update(
        DUNNING_DATA_DIR=str(tmp_path / "data"),
        DUNNING_HTTP_PORT=str(port),
        TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
        DUNNING_CODEC_KEYS=f"k1:{codec_key}",
        DATABASE_URL=f"sqlite:///{tmp_path / 'dunning.db'}",
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "starter.py")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:
                    client.get(f"{base}/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the HTTP service did not start within 60s"
                    time.sleep(0.2)
            token = {"Authorization": f"Bearer {secrets['DUNNING_API_TOKEN']}"}
            # The token from DUNNING_API_TOKEN_FILE is the one that works.
            assert client.post(f"{base}/codec/decode", json={"payloads": []}, headers=token).status_code == 200
            assert client.get(f"{base}/api/journeys", headers={"Authorization": "Bearer nope"}).status_code == 401
            client.get(f"{base}/api/journeys?customer=ana@example.com", headers=token)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            output = proc.communicate(timeout=15)[0].decode()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate(timeout=5)[0].decode()
    assert "GET /api/journeys" in output, "the requests were logged"
    leaked = [name for name, value in secrets.items() if value in output]
    assert not leaked, f"secrets in the log: {leaked}"
    assert codec_key not in output
    assert "ana@example.com" not in output and "customer=<email ***@example.com>" in output
