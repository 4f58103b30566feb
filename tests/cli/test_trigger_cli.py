"""`dunning backfill | start | import` as ops run them: Stripe on loopback, a real dev server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from dunning.cli import app
from dunning.codec import codec_for, data_converter
from dunning.config import get_settings
from dunning.journey import JourneyInput
from tests.support import ROOT, start_dev_server
from tests.webhook_support import StripeStub, intent, invoice

runner = CliRunner()
NOW = int(time.time())


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
def stripe_stub():
    stub = StripeStub()
    yield stub
    stub.close()


@pytest.fixture
def environment(dev_env, harness_factory, tmp_path, monkeypatch, stripe_stub):
    """The CLI's settings: the harness's store (policy active), the dev server, Stripe on loopback."""
    harness = harness_factory(dev_env.client, tmp_path, (ROOT / "policies" / "default.yaml").read_text())
    harness.store.activate_policy(harness.policy_version, activated_by="test", reason="test")
    for name, value in {
        "DUNNING_DATA_DIR": str(tmp_path),
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "STRIPE_API_KEY": "sk_test_cli",
        "STRIPE_API_BASE": stripe_stub.url,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield harness
    get_settings.cache_clear()


async def invoke(*args: str):
    """The CLI runs its own event loop: give it a thread."""
    return await asyncio.wait_for(asyncio.to_thread(runner.invoke, app, list(args), env={"COLUMNS": "200"}), 120)


async def started_input(client, journey_id: str) -> JourneyInput:
    history = await client.get_workflow_handle(journey_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    # The CLI encrypts payloads (a dev key in the data dir): decode as the engine's processes do.
    converter = data_converter(codec_for(get_settings()))
    (journey,) = await converter.decode(started.input.payloads, [JourneyInput])
    return journey


async def status_of(client, journey_id: str) -> WorkflowExecutionStatus | None:
    try:
        return (await client.get_workflow_handle(journey_id).describe()).status
    except RPCError as error:
        assert error.status == RPCStatusCode.NOT_FOUND
        return None


def counts(output: str) -> dict[str, int]:
    """The summary table's rows: outcome -> payments."""
    rows = {}
    for line in output[output.index("summary"):].splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    return rows


def serve_backfill(stub: StripeStub) -> None:
    day = 86400
    stub.listing("/v1/invoices", [
        invoice("in_bf_failed", "cus_bf"),  # attempted, failed
        invoice("in_bf_pastdue", "cus_bf", attempted=False, attempt_count=0, collection_method="send_invoice", due_date=NOW - day),
        invoice("in_bf_notdue", "cus_bf", attempted=False, attempt_count=0, due_date=NOW + day),
        invoice("in_bf_zero", "cus_bf", amount_remaining=0),
    ])
    stub.listing("/v1/payment_intents", [
        intent("pi_bf_alone", "cus_bf"),  # no `invoice` key (API ≥ 2025-03-31): looked up
        intent("pi_bf_modern_of_invoice", "cus_bf"),  # looked up: belongs to in_bf_failed
        intent("pi_bf_ofinvoice", "cus_bf", invoice="in_bf_failed"),
        intent("pi_bf_paid", "cus_bf", status="succeeded"),
        intent("pi_bf_guest", None, invoice=None),
    ])
    stub.listing("/v1/invoice_payments", lambda seen: (
        [{"id": "inpay_1", "object": "invoice_payment", "invoice": "in_bf_failed"}]
        if seen.query.get("payment[payment_intent]") == "pi_bf_modern_of_invoice" else []
    ))


async def test_backfill_starts_the_missing_journeys_once(dev_env, environment, stripe_stub):
    serve_backfill(stripe_stub)
    first = await invoke("backfill", "--since", "2026-11-01")
    assert first.exit_code == 0, first.output
    assert counts(first.output) == {"started": 3, "already open": 0, "already ended": 0, "failed": 0, "skipped": 5}
    assert "skipped in_bf_notdue: not attempted and not yet due" in first.output
    assert "skipped pi_bf_ofinvoice: belongs to invoice in_bf_failed (start that one)" in first.output
    assert "skipped pi_bf_guest: no customer" in first.output
    assert "skipped pi_bf_modern_of_invoice: belongs to invoice in_bf_failed (start that one)" in first.output
    assert "skipped in_bf_zero: nothing remains due" in first.output
    for reference in ("in_bf_failed", "in_bf_pastdue", "pi_bf_alone"):
        assert await status_of(dev_env.client, f"dunning-{reference}") == WorkflowExecutionStatus.RUNNING
        journey = await started_input(dev_env.client, f"dunning-{reference}")
        assert journey.event_id == f"backfill:{reference}" and journey.payment.customer.id == "cus_bf"
    for reference in ("in_bf_notdue", "in_bf_zero", "pi_bf_ofinvoice", "pi_bf_paid", "pi_bf_guest"):
        assert await status_of(dev_env.client, f"dunning-{reference}") is None
    pastdue = await started_input(dev_env.client, "dunning-in_bf_pastdue")
    assert pastdue.payment.failed_at.timestamp() == NOW - 86400  # its due date
    alone = await started_input(dev_env.client, "dunning-pi_bf_alone")
    assert alone.payment.initial_decline.decline_code == "insufficient_funds"
    lookup = next(s for s in stripe_stub.seen if s.path == "/v1/invoice_payments")
    assert lookup.query == {"payment[type]": "payment_intent", "payment[payment_intent]": "pi_bf_alone", "limit": "1"}
    assert await status_of(dev_env.client, "dunning-pi_bf_modern_of_invoice") is None
    listing = next(s for s in stripe_stub.seen if s.path == "/v1/invoices")
    assert listing.query["status"] == "open" and listing.query["created[gte]"] == str(1793491200)
    assert listing.headers["authorization"] == "Bearer sk_test_cli"

    again = await invoke("backfill", "--since", "2026-11-01")
    assert again.exit_code == 0, again.output
    assert counts(again.output) == {"started": 0, "already open": 3, "already ended": 0, "failed": 0, "skipped": 5}
    for reference in ("in_bf_failed", "in_bf_pastdue", "pi_bf_alone"):
        assert (await started_input(dev_env.client, f"dunning-{reference}")).event_id == f"backfill:{reference}"
    for reference in ("in_bf_failed", "in_bf_pastdue", "pi_bf_alone"):
        await dev_env.client.get_workflow_handle(f"dunning-{reference}").terminate("test over")


async def test_backfill_refuses_a_bad_date_and_a_missing_key(environment, monkeypatch):
    bad = await invoke("backfill", "--since", "last tuesday")
    assert bad.exit_code == 1 and "is not a date: use YYYY-MM-DD" in bad.output
    monkeypatch.delenv("STRIPE_API_KEY")
    get_settings.cache_clear()
    keyless = await invoke("backfill", "--since", "2026-11-01")
    assert keyless.exit_code == 2 and "STRIPE_API_KEY is not set" in keyless.output


async def test_start_reads_one_object_from_stripe(dev_env, environment, stripe_stub):
    stripe_stub.object("/v1/invoices/in_manual", invoice("in_manual", "cus_manual", customer_email="m@example.com"))
    stripe_stub.object("/v1/invoices/in_paid", invoice("in_paid", "cus_manual", status="paid"))
    stripe_stub.object("/v1/payment_intents/pi_of_invoice", intent("pi_of_invoice", "cus_manual", invoice="in_manual"))
    started = await invoke("start", "--invoice", "in_manual")
    assert started.exit_code == 0, started.output
    assert "started dunning-in_manual" in started.output
    journey = await started_input(dev_env.client, "dunning-in_manual")
    assert journey.event_id == "manual:in_manual" and journey.payment.customer.email == "m@example.com"
    twice = await invoke("start", "--invoice", "in_manual")
    assert twice.exit_code == 0 and "already open dunning-in_manual" in twice.output

    paid = await invoke("start", "--invoice", "in_paid")
    assert paid.exit_code == 1 and "in_paid: invoice is paid; no journey started" in paid.output
    of_invoice = await invoke("start", "--payment-intent", "pi_of_invoice")
    assert of_invoice.exit_code == 1 and "belongs to invoice in_manual" in of_invoice.output
    missing = await invoke("start", "--invoice", "in_nope")
    assert missing.exit_code == 1 and "Stripe refused reading in_nope" in missing.output and "HTTP 404" in missing.output
    both = await invoke("start", "--invoice", "in_manual", "--payment-intent", "pi_x")
    assert both.exit_code == 2 and "exactly one of" in both.output
    assert await status_of(dev_env.client, "dunning-in_paid") is None
    await dev_env.client.get_workflow_handle("dunning-in_manual").terminate("test over")


GOOD = """payment_reference,customer_id,amount,currency,failed_at,email,phone,timezone,locale,decline_code,payment_method_id,tags
ext_1001,cus_csv1,1999,usd,2026-11-20T10:00:00Z,a@example.com,+14155550100,America/Chicago,en,insufficient_funds,pm_ext1,vip;annual
pi_csv2,cus_csv2,500,EUR,2026-11-21T08:30:00+01:00,,,Europe/Paris,fr-FR,,,
"""


async def test_import_starts_every_valid_row_once(dev_env, environment, tmp_path: Path):
    path = tmp_path / "failures.csv"
    path.write_text(GOOD)
    result = await invoke("import", str(path))
    assert result.exit_code == 0, result.output
    assert "2 valid row(s)" in result.output
    first = await started_input(dev_env.client, "dunning-ext_1001")
    assert first.event_id == "import:ext_1001"
    payment = first.payment
    assert (payment.amount, payment.currency, payment.kind, payment.customer.timezone) == (1999, "usd", "invoice", "America/Chicago")
    assert payment.customer.tags == ("vip", "annual") and payment.initial_decline.decline_code == "insufficient_funds"
    assert payment.initial_decline.payment_method == "pm_ext1"
    second = await started_input(dev_env.client, "dunning-pi_csv2")
    assert second.payment.kind == "payment_intent" and second.payment.customer.locale == "fr-FR"
    assert second.payment.failed_at.isoformat() == "2026-11-21T07:30:00+00:00"
    again = await invoke("import", str(path))
    assert again.exit_code == 0 and "already open" in again.output
    for journey_id in ("dunning-ext_1001", "dunning-pi_csv2"):
        await dev_env.client.get_workflow_handle(journey_id).terminate("test over")


async def test_import_reports_every_bad_row_and_starts_nothing(dev_env, environment, tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "payment_reference,customer_id,amount,currency,failed_at,phone,timezone,email\n"
        "ext_ok,cus_ok,100,usd,2026-11-20T10:00:00Z,,,\n"  # line 2: fine
        "ext_bad1,cus_b,19.99,usd,2026-11-20T10:00:00Z,,,\n"  # line 3
        "ext_bad2,,100,dollars,2026-11-20 10:00,+1 nonsense,Mars/Olympus,not-an-email\n"  # line 4
        '"ext_ok",cus_ok,100,usd,2030-01-01T00:00:00Z,,,\n'  # line 5: repeat + future
    )
    result = await invoke("import", str(path))
    assert result.exit_code == 1
    out = result.output
    for expected in (
        "line 3, amount: '19.99' is not a positive whole number of minor units",
        "line 4, customer_id: is required",
        "line 4, currency: 'dollars' is not a 3-letter ISO 4217 code",
        "line 4, failed_at: '2026-11-20 10:00' is not an ISO-8601 time with offset",
        "line 4, phone: '+1 nonsense' is not a valid E.164 number",
        "line 4, timezone: 'Mars/Olympus' is not an IANA time zone",
        "line 4, email: 'not-an-email' is not an email address",
        "line 5, failed_at: 2030-01-01T00:00:00Z is in the future",
        "nothing was started",
    ):
        assert expected in out, out
    assert await status_of(dev_env.client, "dunning-ext_ok") is None

    header = tmp_path / "header.csv"
    header.write_text("payment_ref,customer_id,amount\nx,y,1\n")
    wrong = await invoke("import", str(header))
    assert wrong.exit_code == 1
    assert "unknown column(s) payment_ref; missing required column(s) payment_reference, currency, failed_at" in wrong.output

    repeat = tmp_path / "repeat.csv"
    repeat.write_text("payment_reference,customer_id,amount,currency,failed_at\nr1,c,1,usd,2026-11-20T10:00:00Z\nr1,c,1,usd,2026-11-20T10:00:00Z\n")
    repeated = await invoke("import", str(repeat))
    assert repeated.exit_code == 1 and "line 3, payment_reference: r1 repeats line 2" in repeated.output


def test_the_documentation_lists_every_import_column():
    from dunning.cli.triggers import COLUMNS, REQUIRED

    doc = (ROOT / "docs" / "webhooks.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| `")}
    assert set(COLUMNS) <= set(rows), set(COLUMNS) - set(rows)
    assert {c for c in COLUMNS if rows[c] == "yes"} == set(REQUIRED)
