"""With the codec on, a journey's history as the `temporal` CLI shows it holds no contact data.

A control journey on the same server without the codec shows the same data, so the search
below really finds plaintext when it is there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from dunning import codec
from dunning.codec import EncryptionCodec, parse_keys
from dunning.config import Settings
from dunning.enums import Stage
from dunning.journey import JourneyStatus, OpsAction
from dunning.scenarios import Scenario
from dunning.temporal import connect
from tests.support import binary, start_dev_server

NAME, EMAIL, PHONE = "Ioana Vasilescu", "ioana.vasilescu@example.org", "+40721987654"
CONTACT = (NAME, EMAIL, PHONE)

# Messages by email and SMS at once, then retries far enough apart that the test cancels first.
POLICY = """\
name: pii
window: 1h
grace_period: 30m
timing:
  retry_hours: ["00:00", "23:59:59"]
  quiet_hours_end: "00:00"
  quiet_hours_start: "23:59:59"
  jitter: 0s
messaging: {max_per_24h: 10, max_per_7d: 20}
steps:
  - {id: notice, at: 0s, window: 2s, action: notify, channels: [email, sms], template: payment_failed}
  - {id: retry-1, at: 1s, window: 1s, action: retry}
  - {id: retry-2, at: 30m, window: 1m, action: retry}
  - {id: hand-off, at: 1h, action: hand_off}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scenario(invoice: str) -> Scenario:
    return Scenario.model_validate(
        {
            "id": invoice,
            "amount": 2500,
            "currency": "eur",
            "failed_at": datetime.now(timezone.utc).isoformat(),
            "customer": {"id": f"cus_{invoice}", "name": NAME, "email": EMAIL, "phone": PHONE, "timezone": "Europe/Bucharest"},
            "payment_methods": [
                {"id": f"pm_{invoice}", "brand": "visa", "default": True, "behavior": {"default": {"decline_code": "insufficient_funds"}}}
            ],
            "initial_decline": {"payment_method": f"pm_{invoice}", "decline_code": "insufficient_funds"},
        }
    )


def contact_data_in(text: str) -> set[str]:
    """Contact values found in the CLI output, as text or inside base64-encoded payload data."""
    haystacks = [text]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and len(node) >= 8:
            try:
                haystacks.append(base64.b64decode(node, validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass

    walk(json.loads(text))
    return {value for value in CONTACT if any(value in hay for hay in haystacks)}


def cli_history(address: str, workflow_id: str) -> str:
    result = subprocess.run(
        [binary("temporal"), "workflow", "show", "--workflow-id", workflow_id, "--output", "json",
         "--address", address, "--namespace", "default"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def run_journey(harness, invoice: str) -> str:
    """Until both messages went out and a retry ran, then cancel; returns the journey id."""
    async with harness.worker():
        handle = await harness.start(scenario(invoice))
        for _ in range(450):  # up to 90 s: generous for a loaded 2-core CI machine
            status = await handle.query("status", result_type=JourneyStatus)
            if status and len(status.messages) >= 2 and any(a.number > 0 for a in status.attempts):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"{invoice}: the messages and first retry never ran")
        await handle.signal("cancel", OpsAction(reason="test over", event_id=f"evt_end_{invoice}"))
        final: JourneyStatus = await asyncio.wait_for(handle.result(), timeout=60)
    assert final.stage is Stage.cancelled
    assert {m.channel.value for m in final.messages} >= {"email", "sms"}
    return handle.id


async def test_contact_data_never_appears_in_history_with_the_codec(tmp_path: Path, harness_factory):
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = await start_dev_server(
        dev_server_database_filename=str(tmp_path / "temporal.db"),
        port=port,
    )
    try:
        # Encrypted: the client every process gets from connect(), with the data dir's dev key.
        settings = Settings(dunning_data_dir=tmp_path / "data", temporal_address=address)
        client = await connect(settings)
        assert isinstance(client.data_converter.payload_codec, EncryptionCodec)
        (tmp_path / "enc").mkdir()
        encrypted = await run_journey(harness_factory(client, tmp_path / "enc", POLICY), "in_pii_enc")

        # Control: the same journey without the codec.
        plain_client = await Client.connect(address, data_converter=pydantic_data_converter)
        (tmp_path / "plain").mkdir()
        control = await run_journey(harness_factory(plain_client, tmp_path / "plain", POLICY), "in_pii_plain")

        assert contact_data_in(cli_history(address, control)) == set(CONTACT), "the control shows plaintext"
        shown = cli_history(address, encrypted)
        assert contact_data_in(shown) == set()
        assert "binary/encrypted" in shown or base64.b64encode(b"binary/encrypted").decode() in shown

        # The key that wrote it reads it back: the ops API and CLI still see the real journey.
        status = await client.get_workflow_handle(encrypted, result_type=JourneyStatus).result()
        assert status.stage is Stage.cancelled
        same_keys = parse_keys((tmp_path / "data" / codec.DEV_KEY_FILE).read_text())
        assert client.data_converter.payload_codec.key_ids == [k.kid for k in same_keys]
    finally:
        await env.shutdown()
