"""The dashboard in a real headless Chromium, driven over the DevTools protocol.

It signs in through the login form, then checks that every figure on the page is the one
`/api/reports` returns, and saves a full-page screenshot (DUNNING_SCREENSHOT_DIR, else tmp).
Chromium is Debian's package (`make test` installs it); this test never skips.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn

from dunning.api.app import create_app
from dunning.config import Settings
from dunning.rendering import format_amount
from dunning.store import Store
from tests.dunning.test_reports import seed

CHROMIUM = os.environ.get("DUNNING_CHROMIUM", "/usr/bin/chromium")
TOKEN = "e2e-token-5678"
STEP_TIMEOUT = 20.0  # seconds, for each browser step


def chromium_binary() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None:
        pytest.fail(
            f"{CHROMIUM} is missing. `make test` installs it (Debian package `chromium`); or run\n"
            "    apt-get update && apt-get install -y chromium",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The HTTP service on a loopback port, over a seeded SQLite store."""
    store = Store(f"sqlite:///{tmp_path / 'dunning.db'}")
    store.upgrade()
    seed(store)
    settings = Settings(dunning_data_dir=tmp_path, temporal_address="127.0.0.1:9", dunning_api_token=TOKEN)
    port = free_port()
    # log_config=None: access lines reach the root logger, where the test looks for the token.
    config = uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=port, log_config=None, access_log=True)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn-e2e", daemon=True)
    thread.start()
    deadline = time.monotonic() + STEP_TIMEOUT
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the HTTP service did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=STEP_TIMEOUT)
    store.dispose()


class Browser:
    """Just enough of the DevTools protocol: navigate, evaluate, wait for loads, screenshot."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self._ws = ws
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                message = json.loads((await self._ws.receive()).data)
                if message.get("id") == message_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]
                self._events.append(message)

    async def wait_for(self, event: str) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT):
            while True:
                for index, message in enumerate(self._events):
                    if message.get("method") == event:
                        del self._events[: index + 1]
                        return message.get("params", {})
                self._events.clear()
                self._events.append(json.loads((await self._ws.receive()).data))

    async def load(self, url: str) -> None:
        self._events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_for("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        metrics = await self.send("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"])
        await self.send("Emulation.setDeviceMetricsOverride", width=1280, height=height, deviceScaleFactor=1, mobile=False)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = subprocess.Popen(
        [
            chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "--window-size=1280,900", "about:blank",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        active = profile / "DevToolsActivePort"  # Chromium writes its chosen port here
        deadline = time.monotonic() + STEP_TIMEOUT
        while not (active.exists() and active.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit code {proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT)) as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t["type"] == "page"]
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Browser(ws)
                await tab.send("Page.enable")
                yield tab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Figures(HTMLParser):
    """Text of every element carrying data-figure (figures are leaf elements)."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open.append((tag, dict(attrs).get("data-figure")))
        if dict(attrs).get("data-figure"):
            self.figures[dict(attrs)["data-figure"]] = ""

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, name in reversed(self._open):
            if name:
                self.figures[name] += data
                break


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def days(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 24:.1f} h" if value < 1 else f"{value:.1f} d"


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def expected_group(prefix: str, group: dict[str, Any]) -> dict[str, str]:
    out = {
        f"{prefix}.journeys": f"{group['journeys']:,}",
        f"{prefix}.open": f"{group['open']:,}",
        f"{prefix}.recovered": f"{group['recovered']:,}",
        f"{prefix}.recovery_rate": pct(group["recovery_rate"]),
        f"{prefix}.median_days_to_recovery": days(group["median_days_to_recovery"]),
        f"{prefix}.attempts_per_recovery": ratio(group["attempts_per_recovery"]),
        f"{prefix}.messages_sent": f"{group['messages_sent']:,}",
        f"{prefix}.messages_per_recovery": ratio(group["messages_per_recovery"]),
    }
    for currency, figures in group["currencies"].items():
        out[f"{prefix}.currencies.{currency}.recovered_amount"] = format_amount(figures["recovered_amount"], currency, "en")
        out[f"{prefix}.currencies.{currency}.amount_due"] = format_amount(figures["amount_due"], currency, "en")
        out[f"{prefix}.currencies.{currency}.recovery_rate_by_amount"] = pct(figures["recovery_rate_by_amount"])
    return out


def expected_figures(by_class: dict[str, Any], by_channel: dict[str, Any]) -> dict[str, str]:
    out = expected_group("totals", by_class["totals"])
    for report, by in ((by_class, "decline_class"), (by_channel, "channel")):
        for group in report["groups"]:
            out |= expected_group(f"{by}.{group['key'] or 'none'}", group)
    for row in by_class["funnel"]:
        prefix = f"funnel.{row['step'] or 'none'}"
        out |= {
            f"{prefix}.reached": f"{row['reached']:,}", f"{prefix}.reached_rate": pct(row["reached_rate"]),
            f"{prefix}.recovered": f"{row['recovered']:,}", f"{prefix}.recovery_rate": pct(row["recovery_rate"]),
        }
    for period in by_class["over_time"]:
        prefix = f"over_time.{period['period']}"
        out |= {
            f"{prefix}.journeys": f"{period['journeys']:,}", f"{prefix}.recovered": f"{period['recovered']:,}",
            f"{prefix}.recovery_rate": pct(period["recovery_rate"]), f"{prefix}.recoveries": f"{period['recoveries']:,}",
        }
        for currency, amount in period["recovered_amount"].items():
            out[f"{prefix}.recovered_amount.{currency}"] = format_amount(amount, currency, "en")
    return out


async def test_dashboard_in_chromium_shows_the_reports_figures(
    server: str, browser: Browser, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    # Signing in: the form, not a token in the URL.
    await browser.load(f"{server}/")
    assert await browser.evaluate("location.pathname") == "/login"
    await browser.evaluate(
        f"document.querySelector('input[name=token]').value = {json.dumps(TOKEN)};"
        "document.querySelector('form[action=\"/login\"]').submit();"
    )
    await browser.wait_for("Page.loadEventFired")
    assert await browser.evaluate("location.pathname") == "/"
    assert await browser.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read the session
    html = await browser.evaluate("document.documentElement.outerHTML")
    screenshot = Path(os.environ.get("DUNNING_SCREENSHOT_DIR") or tmp_path) / "dashboard.png"
    await browser.screenshot(screenshot)
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one

    async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=STEP_TIMEOUT) as api:
        by_class = (await api.get("/api/reports", params={"by": "decline_class"})).json()
        by_channel = (await api.get("/api/reports", params={"by": "channel"})).json()
    parser = Figures()
    parser.feed(html)
    shown = {name: " ".join(text.split()) for name, text in parser.figures.items()}
    expected = expected_figures(by_class, by_channel)
    assert len(expected) > 150
    assert {name: shown.get(name) for name in expected} == expected
    assert shown["open_journeys"] == "1"
    assert "Recovery rate over time" in html and "Funnel by step" in html and "<svg" in html

    # The live journeys table links to the journey page, which shows the projection's timeline.
    await browser.evaluate("document.querySelector('tr[data-journey=\"dunning-in_a3\"] a').click()")
    await browser.wait_for("Page.loadEventFired")
    assert await browser.evaluate("location.pathname") == "/journeys/dunning-in_a3"
    text = await browser.evaluate("document.body.innerText")
    assert "payment failed; policy default@" in text and "attempt retry-3" in text
    await browser.screenshot(screenshot.with_name("journey.png"))

    access = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert any('"POST /login HTTP/1.1" 303' in line for line in access)
    assert not any(TOKEN in record.getMessage() for record in caplog.records)
