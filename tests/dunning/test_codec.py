"""The payload codec: AES-GCM with key ids, rotation, clear errors, the dev key, TLS settings."""

from __future__ import annotations

import base64
import os
import stat
from datetime import datetime, timezone

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from dunning import codec
from dunning.codec import CodecError, CodecKey, EncryptionCodec, UnknownKeyError, parse_keys
from dunning.config import Settings
from dunning.enums import Stage
from dunning.journey import JourneyStatus, OpsAction
from dunning.scenarios import Scenario
from dunning.temporal import tls_config
from workflows.dunning import DunningWorkflow

KEY_A = CodecKey("a", bytes(range(32)))
KEY_B = CodecKey("b", bytes(range(1, 33)))


def spec(*keys: CodecKey) -> str:
    return ",".join(f"{k.kid}:{base64.b64encode(k.key).decode()}" for k in keys)


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_round_trip_hides_the_data_and_names_the_key():
    box = EncryptionCodec([KEY_A])
    [sealed] = await box.encode([plain('{"email":"ana@example.com"}')])
    assert b"ana@example.com" not in sealed.SerializeToString()
    assert sealed.metadata["encoding"] == b"binary/encrypted" and sealed.metadata["encryption-key-id"] == b"a"
    [opened] = await box.decode([sealed])
    assert opened == plain('{"email":"ana@example.com"}')


async def test_each_payload_gets_a_fresh_nonce():
    box = EncryptionCodec([KEY_A])
    first, second = await box.encode([plain("x"), plain("x")])
    assert first.data != second.data


async def test_rotation_encrypts_with_the_first_key_and_decrypts_with_any():
    [old] = await EncryptionCodec([KEY_A]).encode([plain("old")])
    rotated = EncryptionCodec([KEY_B, KEY_A])
    [new] = await rotated.encode([plain("new")])
    assert new.metadata["encryption-key-id"] == b"b"
    assert await rotated.decode([old, new]) == [plain("old"), plain("new")]


async def test_unknown_key_id_is_a_clear_error():
    [sealed] = await EncryptionCodec([KEY_A]).encode([plain("x")])
    with pytest.raises(UnknownKeyError, match=r"key id 'a', which is not configured \(known: b\)"):
        await EncryptionCodec([KEY_B]).decode([sealed])


async def test_tampering_and_relabelling_are_detected():
    box = EncryptionCodec([KEY_A, CodecKey("a2", KEY_A.key)])
    [sealed] = await box.encode([plain("x")])
    tampered = Payload(metadata=sealed.metadata, data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    with pytest.raises(CodecError, match="failed authentication"):
        await box.decode([tampered])
    relabelled = Payload(metadata={**sealed.metadata, "encryption-key-id": b"a2"}, data=sealed.data)
    with pytest.raises(CodecError, match="failed authentication"):
        await box.decode([relabelled])


async def test_unencrypted_payloads_pass_through_decode():
    assert await EncryptionCodec([KEY_A]).decode([plain("legacy")]) == [plain("legacy")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no codec keys"),
        ("a", "expected 'kid:base64key'"),
        ("a:not base64!", "not valid base64"),
        ("a:" + base64.b64encode(b"short").decode(), "needs 32"),
        ("bad id:" + base64.b64encode(bytes(32)).decode(), "key id"),
        (spec(KEY_A, CodecKey("a", KEY_B.key)), "duplicate"),
    ],
)
def test_bad_key_configuration_is_refused(text, message):
    with pytest.raises(CodecError, match=message):
        parse_keys(text)


def test_key_file_accepts_lines_and_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# active first\n{spec(KEY_B)}\n{spec(KEY_A)}  # retired 2025-01\n")
    keys = codec.configured_keys(Settings(dunning_codec_key_file=path, temporal_address="temporal.internal:7233"))
    assert [k.kid for k in keys] == ["b", "a"]


def test_dev_key_is_generated_once_with_0600_for_a_local_server(tmp_path):
    settings = Settings(dunning_data_dir=tmp_path, temporal_address="127.0.0.1:7233")
    first = codec.configured_keys(settings)
    path = tmp_path / codec.DEV_KEY_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert codec.configured_keys(settings) == first
    assert not list(tmp_path.glob(".*.tmp")), "the staging file is removed"


def test_a_remote_cluster_gets_no_generated_key(tmp_path):
    settings = Settings(dunning_data_dir=tmp_path, temporal_address="temporal.prod:7233")
    assert codec.configured_keys(settings) is None
    assert not (tmp_path / codec.DEV_KEY_FILE).exists()
    with pytest.raises(CodecError, match="DUNNING_CODEC_REQUIRED"):
        codec.configured_keys(settings.model_copy(update={"dunning_codec_required": True}))


def test_codec_keys_are_not_shown_by_settings():
    text = repr(Settings(dunning_codec_keys=spec(KEY_A), temporal_api_key="tk-secret"))
    assert spec(KEY_A).split(":")[1] not in text and "tk-secret" not in text


def test_tls_settings(tmp_path):
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    mtls = tls_config(
        Settings(temporal_tls_cert=tmp_path / "c.pem", temporal_tls_key=tmp_path / "k.pem", temporal_tls_server_name="ns.tmprl.cloud")
    )
    assert (mtls.client_cert, mtls.client_private_key, mtls.domain) == (b"CERT", b"KEY", "ns.tmprl.cloud")
    assert tls_config(Settings(temporal_api_key="key")) is True, "an API key is only sent over TLS"
    assert tls_config(Settings()) is False
    with pytest.raises(ValueError, match="go together"):
        Settings(temporal_tls_cert=tmp_path / "c.pem")


# -- rotation on a real server: history written with key A replays once key B is active ---------


def cancelled_scenario(now: datetime) -> Scenario:
    return Scenario.model_validate(
        {
            "id": "in_rotation",
            "amount": 990,
            "currency": "eur",
            "failed_at": now.isoformat(),
            "customer": {"id": "cus_rot", "name": "Ana Pop", "email": "ana@example.com", "phone": "+40712345678"},
            "payment_methods": [{"id": "pm_rot", "brand": "visa", "default": True, "behavior": {"default": {"decline_code": "insufficient_funds"}}}],
            "initial_decline": {"payment_method": "pm_rot", "decline_code": "insufficient_funds"},
        }
    )


async def test_history_written_with_key_a_replays_after_key_b_becomes_active(time_env, tmp_path, default_policy_text, harness_factory):
    def client_with(*keys: CodecKey) -> Client:
        return Client(
            time_env.client.service_client,
            namespace=time_env.client.namespace,
            data_converter=codec.data_converter(EncryptionCodec(list(keys))),
        )

    harness = harness_factory(client_with(KEY_A), tmp_path, default_policy_text)
    now = (await time_env.get_current_time()).astimezone(timezone.utc)
    async with harness.worker():
        handle = await harness.start(cancelled_scenario(now))
        await handle.signal("cancel", OpsAction(reason="rotation test", event_id="evt_rot"))
        assert (await handle.result()).stage is Stage.cancelled
    history = await handle.fetch_history()
    raw = history.to_json()
    assert "ana@example.com" not in raw and "encryption-key-id" in raw.replace("\\", "")

    rotated = codec.data_converter(EncryptionCodec([KEY_B, KEY_A]))
    replay = await Replayer(workflows=[DunningWorkflow], data_converter=rotated).replay_workflow(
        WorkflowHistory.from_json(handle.id, raw), raise_on_replay_failure=True
    )
    assert replay.replay_failure is None
    status = await client_with(KEY_B, KEY_A).get_workflow_handle(handle.id, result_type=JourneyStatus).result()
    assert status.stage is Stage.cancelled and status.end_reason == "rotation test"

    # Without key A the same history cannot be read: the check above is not vacuous.
    with pytest.raises(Exception) as failed:
        await client_with(KEY_B).get_workflow_handle(handle.id, result_type=JourneyStatus).result()
    assert "not configured" in repr(failed.value) or "not configured" in str(failed.value.__cause__)
