"""Dashboard pages, sign-in and `GET /api/reports` over HTTP (no browser; see test_dashboard_e2e)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dunning.api.app import create_app
from dunning.api.dashboard import SESSION_COOKIE, session_value, valid_session
from dunning.config import Settings
from dunning.reports import parse_since, recovery_report
from dunning.store import Store
from tests.dunning.test_reports import seed

TOKEN = "dash-token-0042"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    seed(store)
    yield store
    store.dispose()


@pytest.fixture
def app(tmp_path: Path, store: Store):
    settings = Settings(dunning_data_dir=tmp_path, temporal_address="127.0.0.1:9", dunning_api_token=TOKEN)
    return create_app(settings, store)


def client(app, base_url: str = "http://test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


def without_time(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "generated_at"}


async def test_api_reports_requires_the_token_and_returns_the_report(app, store: Store):
    async with client(app) as http:
        assert (await http.get("/api/reports")).status_code == 401
        assert (await http.get("/api/reports", headers={"Authorization": "Bearer nope"})).status_code == 401
        default = await http.get("/api/reports", headers=AUTH)
        by_step = await http.get("/api/reports", params={"by": "step", "since": "2026-03-02", "interval": "week"}, headers=AUTH)
    assert default.status_code == 200
    assert without_time(default.json()) == without_time(recovery_report(store).model_dump(mode="json"))
    assert by_step.status_code == 200
    expected = recovery_report(store, by="step", since=parse_since("2026-03-02"), interval="week")
    assert without_time(by_step.json()) == without_time(expected.model_dump(mode="json"))
    assert by_step.json()["totals"]["journeys"] == 7 and by_step.json()["by"] == "step"


async def test_api_reports_rejects_bad_parameters_with_the_reason(app):
    async with client(app) as http:
        naive = await http.get("/api/reports", params={"since": "2026-03-02T10:00:00"}, headers=AUTH)
        garbage = await http.get("/api/reports", params={"since": "yesterday"}, headers=AUTH)
        by = await http.get("/api/reports", params={"by": "stage"}, headers=AUTH)
    assert naive.status_code == 400 and "no UTC offset" in naive.json()["detail"]
    assert garbage.status_code == 400 and "use YYYY-MM-DD" in garbage.json()["detail"]
    assert by.status_code == 422 and "decline_class" in by.text and "variant" in by.text


async def test_pages_send_browsers_to_the_login_form_and_keep_where_they_were_going(app):
    async with client(app) as http:
        response = await http.get("/journeys/dunning-in_a3?x=1")
        assert response.status_code == 303
        assert response.headers["location"] == "/login?next=%2Fjourneys%2Fdunning-in_a3%3Fx%3D1"
        form = await http.get("/login", params={"next": "/journeys/dunning-in_a3"})
        assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
        assert 'value="/journeys/dunning-in_a3"' in form.text
        # A token in the URL is not a way in (it would land in access logs and history).
        assert (await http.get("/", params={"token": TOKEN})).status_code == 303


async def test_login_sets_an_httponly_strict_cookie_that_is_not_the_token(app):
    async with client(app) as http:
        wrong = await http.post("/login", data={"token": "guess", "next": "/"})
        assert wrong.status_code == 401 and "That token is not valid" in wrong.text
        assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
        ok = await http.post("/login", data={"token": TOKEN, "next": "/journeys/dunning-in_a3"})
        assert ok.status_code == 303 and ok.headers["location"] == "/journeys/dunning-in_a3"
        cookie = ok.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=") and TOKEN not in cookie
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
        assert "max-age=43200" in lowered and "secure" not in lowered  # plain HTTP on loopback
        page = await http.get("/")  # the client keeps the cookie
        assert page.status_code == 200 and "Recovery rate over time" in page.text
        assert page.headers["cache-control"] == "no-store"
        out = await http.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert (await http.get("/")).status_code == 303


async def test_login_over_https_marks_the_cookie_secure_and_never_redirects_off_site(app):
    async with client(app, "https://dunning.example") as http:
        for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
            response = await http.post("/login", data={"token": TOKEN, "next": target})
            assert response.status_code == 303 and response.headers["location"] == "/"
        assert "secure" in response.headers["set-cookie"].lower()


def test_sessions_expire_and_cannot_be_forged():
    now = time.time()
    good = session_value(TOKEN, int(now) + 60)
    assert valid_session(TOKEN, good, now)
    assert not valid_session(TOKEN, good, now + 61)  # expired
    assert not valid_session("rotated-token", good, now)  # a new token ends every session
    expires, _, mac = good.partition(".")
    assert not valid_session(TOKEN, f"{int(expires) + 3600}.{mac}", now)  # extended by hand
    assert not valid_session(TOKEN, None) and not valid_session(TOKEN, "garbage") and not valid_session(TOKEN, "x.y")


async def test_dashboard_shows_the_figures_and_the_live_journeys(app):
    async with client(app) as http:
        page = await http.get("/", headers=AUTH)
    html = page.text
    assert page.status_code == 200
    assert '<td class="num" data-figure="decline_class.insufficient_funds.recovery_rate">100.0%</td>' in html
    assert '<div class="value" data-figure="totals.recovery_rate">62.5%</div>' in html
    assert 'data-figure="totals.currencies.eur.recovered_amount">€80.00<' in html
    assert 'data-figure="channel.none.journeys">2<' in html
    assert '<a href="/journeys/dunning-in_a3">dunning-in_a3</a>' in html
    assert "attempt retry-3" in html and "2026-03-09 10:00 UTC" in html
    assert "<script" not in html  # usable without JavaScript


async def test_dashboard_filters_and_explains_bad_filters(app):
    async with client(app) as http:
        since = await http.get("/", params={"since": "2026-03-02", "interval": "week"}, headers=AUTH)
        bad = await http.get("/", params={"since": "soon"}, headers=AUTH)
        bad_interval = await http.get("/", params={"interval": "month"}, headers=AUTH)
    assert since.status_code == 200
    assert '<div class="value" data-figure="totals.journeys">7</div>' in since.text
    assert 'data-figure="over_time.2026-03-02.journeys">4<' in since.text
    assert bad.status_code == 400 and "is not a date: use YYYY-MM-DD" in bad.text
    assert bad_interval.status_code == 400 and "interval=&#39;month&#39; is not one of day|week" in bad_interval.text


async def test_journey_page_shows_the_projection_and_its_timeline(app):
    async with client(app) as http:
        page = await http.get("/journeys/dunning-in_a1", headers=AUTH)
        missing = await http.get("/journeys/dunning-in_nope", headers=AUTH)
    assert page.status_code == 200
    assert 'data-figure="journey.stage">recovered<' in page.text
    assert "by retry <code>retry-2</code>" in page.text and "€10.00" in page.text
    assert "payment failed; policy default@" in page.text
    assert "<code>recovered</code>" in page.text  # the confirmation message, from the store
    assert missing.status_code == 404 and "No such journey" in missing.text
