"""The recovery dashboard (`/`, `/journeys/{id}`) and the reports API (`GET /api/reports`).

Server-rendered Jinja2, no JavaScript: every figure is in a table, charts are inline SVG.

Auth: the ops token. `/api/reports` takes it as a bearer header like the rest of `/api`. The
pages take a bearer header too (curl), and for browsers a login form (`/login`) that posts the
token once and sets a session cookie: HttpOnly, SameSite=Strict, Secure on HTTPS, 12 hours. The
cookie holds an expiry and an HMAC of it keyed by the token, not the token itself, so it cannot
be replayed against `/api` and changing the token ends every session. `?token=` is deliberately
not accepted: URLs end up in access logs, browser history and Referer headers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from dunning.enums import TERMINAL_STAGES
from dunning.rendering import format_amount
from dunning.reports import (
    NO_KEY_LABELS,
    GroupBy,
    Interval,
    PeriodFigures,
    RecoveryReport,
    ReportError,
    breakdown,
    open_journeys,
    parse_since,
    recovery_report,
)

TEMPLATES = Path(__file__).parent / "templates"
SESSION_COOKIE = "dunning_session"
SESSION_SECONDS = 12 * 3600
MAX_LOGIN_BODY = 4096
LIVE_JOURNEYS = 100
CHART_WIDTH, CHART_HEIGHT = 720, 180

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html", "j2"], default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


# -- formatting (also what the page's figures look like; tests read them back) -------------------


def fmt_count(value: int) -> str:
    return f"{value:,}"


def fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def fmt_days(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 24:.1f} h" if value < 1 else f"{value:.1f} d"


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def fmt_amount(amount: int, currency: str) -> str:
    return format_amount(amount, currency, "en")


def fmt_time(value: datetime | str | None) -> str:
    if isinstance(value, str):  # timeline entries are stored as JSON
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value is None:
        return "—"
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def label(key: str | None, by: str) -> str:
    if key is None:
        return NO_KEY_LABELS.get(by, "unknown")
    return key.replace("_", " ")


def figure_key(key: str | None) -> str:
    return "none" if key is None else key


_env.filters.update(
    count=fmt_count, rate=fmt_rate, days=fmt_days, ratio=fmt_ratio, when=fmt_time, fkey=figure_key
)
_env.globals.update(amount=fmt_amount, label=label, terminal=[s.value for s in TERMINAL_STAGES])


# -- charts -------------------------------------------------------------------------------------


def bar_chart(values: list[tuple[str, float | None, str]], top: float) -> dict[str, Any]:
    """SVG geometry for bars (label, value or None for no bar, tooltip), scaled to `top`."""
    n = max(len(values), 1)
    slot = CHART_WIDTH / n
    gap = min(slot * 0.2, 6)
    bars = []
    for index, (name, value, title) in enumerate(values):
        if value is None:
            continue
        height = 0 if top <= 0 else max(value / top * CHART_HEIGHT, 1 if value > 0 else 0)
        bars.append(
            {"x": round(index * slot + gap / 2, 2), "y": round(CHART_HEIGHT - height, 2),
             "w": round(slot - gap, 2), "h": round(height, 2), "title": f"{name}: {title}"}
        )
    return {
        "bars": bars, "width": CHART_WIDTH, "height": CHART_HEIGHT,
        "first": values[0][0] if values else "", "last": values[-1][0] if values else "",
    }


def charts(report: RecoveryReport) -> dict[str, Any]:
    periods: list[PeriodFigures] = report.over_time
    name = (lambda p: f"week of {p.period}") if report.interval is Interval.week else (lambda p: str(p.period))
    rate = bar_chart(
        [(name(p), p.recovery_rate, f"{fmt_rate(p.recovery_rate)} of {p.journeys} recovered") for p in periods],
        1.0,
    )
    revenue = []
    for currency in sorted({c for p in periods for c in p.recovered_amount}):
        amounts = [p.recovered_amount.get(currency, 0) for p in periods]
        top = max(amounts)
        revenue.append(
            {
                "currency": currency,
                "top": fmt_amount(top, currency),
                "total": fmt_amount(sum(amounts), currency),
                "chart": bar_chart(
                    [(name(p), a, fmt_amount(a, currency)) for p, a in zip(periods, amounts, strict=True)], top
                ),
            }
        )
    return {"rate": rate, "revenue": revenue}


# -- sessions -----------------------------------------------------------------------------------


def session_value(token: str, expires: int) -> str:
    mac = hmac.new(token.encode(), f"dashboard-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def valid_session(token: str, value: str | None, now: float | None = None) -> bool:
    if not value or "." not in value:
        return False
    expires, _, _mac = value.partition(".")
    if not expires.isdigit() or int(expires) < (now if now is not None else time.time()):
        return False
    return secrets.compare_digest(value, session_value(token, int(expires)))


def authorized(request: Request, token: str) -> bool:
    """The ops token as a bearer header (curl, the CLI) or a valid dashboard session cookie."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(credentials.strip(), token):
        return True
    return valid_session(token, request.cookies.get(SESSION_COOKIE))


def _safe_next(value: str | None) -> str:
    """Only local paths: an open redirect after login would be a phishing aid."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    headers = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(html, status_code=status, headers=headers)


# -- routes -------------------------------------------------------------------------------------


def build_router(services) -> APIRouter:
    from dunning.api.app import require_token

    router = APIRouter()
    store = services.store

    def page(request: Request, handler, **kwargs: Any) -> Response:
        if authorized(request, services.token):
            return handler(**kwargs)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @router.get("/api/reports", tags=["reports"], dependencies=[Depends(require_token(services))])
    def api_reports(
        since: Annotated[str | None, Query(description="YYYY-MM-DD (UTC) or ISO datetime with offset")] = None,
        by: Annotated[GroupBy, Query(description="how to group the journeys")] = GroupBy.decline_class,
        interval: Annotated[Interval | None, Query(description="over-time buckets; default: day up to ~3 months")] = None,
    ) -> RecoveryReport:
        try:
            return recovery_report(store, since=parse_since(since), by=by, interval=interval)
        except ReportError as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(request: Request, since: str | None = None, interval: str | None = None) -> Response:
        def render() -> Response:
            try:
                start = parse_since(since)
                report = recovery_report(store, since=start, by=GroupBy.decline_class, interval=interval or None)
                by_channel = breakdown(store, since=start, by=GroupBy.channel)
            except ReportError as exc:
                return _render("dashboard.html.j2", 400, error=str(exc), since=since or "", interval=interval or "")
            journeys, open_total = open_journeys(store, limit=LIVE_JOURNEYS)
            return _render(
                "dashboard.html.j2",
                report=report,
                by_class=report.groups,
                by_channel=by_channel,
                funnel_top=max((row.reached for row in report.funnel), default=0),
                journeys=journeys,
                open_total=open_total,
                charts=charts(report),
                since=since or "",
                interval=interval or "",
                error=None,
            )

        return page(request, render)

    @router.get("/journeys/{journey_id}", response_class=HTMLResponse, include_in_schema=False)
    def journey_page(request: Request, journey_id: str) -> Response:
        def render() -> Response:
            journey = store.get_journey(journey_id) if len(journey_id) <= 255 else None
            if journey is None:
                return _render("not_found.html.j2", 404, journey_id=journey_id)
            return _render(
                "journey.html.j2",
                journey=journey,
                attempts=store.attempts_for_journey(journey_id),
                messages=store.messages_for_journey(journey_id),
                terminal=journey.stage in TERMINAL_STAGES,
            )

        return page(request, render)

    @router.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(next: str | None = None) -> Response:
        return _render("login.html.j2", next=_safe_next(next), error=None)

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_LOGIN_BODY:
            return _render("login.html.j2", 413, next="/", error="The form is too large.")
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        if not token or not secrets.compare_digest(token, services.token):
            return _render("login.html.j2", 401, next=target, error="That token is not valid. Paste the ops API token shown by `make up`.")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(services.token, int(time.time()) + SESSION_SECONDS),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @router.post("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return router

