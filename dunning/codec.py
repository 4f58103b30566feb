"""Payload encryption: customer contact data never reaches Temporal (history, UI, CLI) in plaintext.

AES-256-GCM over each serialized payload. The key id travels in the payload's metadata, so keys
rotate without re-encrypting history: the first configured key encrypts, every configured key
decrypts. Payloads that were never encrypted pass through unchanged (histories from before the
codec was switched on still replay).

Keys: DUNNING_CODEC_KEYS="kid1:<base64 32 bytes>,kid2:..." or DUNNING_CODEC_KEY_FILE (same
format, one key per line or comma-separated, `#` comments). With neither, a dev stack on this
machine (Temporal on loopback) uses `$DUNNING_DATA_DIR/codec-keys`, generated on first use (0600).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from dunning.config import Settings

ENCODING = b"binary/encrypted"
CIPHER = b"AES-256-GCM"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
METADATA_CIPHER = "encryption-cipher"
KEY_BYTES = 32
NONCE_BYTES = 12
DEV_KEY_FILE = "codec-keys"
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

logger = logging.getLogger(__name__)


class CodecError(Exception):
    """A payload cannot be decrypted, or the key configuration is unusable."""


class UnknownKeyError(CodecError):
    pass


@dataclasses.dataclass(frozen=True)
class CodecKey:
    kid: str
    key: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if not _KID.match(self.kid):
            raise CodecError(f"key id {self.kid!r}: use 1-64 letters, digits, '_', '-' or '.'")
        if len(self.key) != KEY_BYTES:
            raise CodecError(f"key {self.kid!r} is {len(self.key)} bytes; AES-256-GCM needs {KEY_BYTES}")


def parse_keys(spec: str) -> list[CodecKey]:
    """'kid1:base64,kid2:base64' (commas or newlines, '#' comments). Order matters: the first encrypts."""
    keys: list[CodecKey] = []
    for raw_line in spec.splitlines():
        line = raw_line.split("#", 1)[0]
        for item in filter(None, (part.strip() for part in line.split(","))):
            kid, sep, encoded = item.partition(":")
            if not sep:
                raise CodecError(f"codec key entry {kid[:16]!r}...: expected 'kid:base64key'")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise CodecError(f"codec key {kid.strip()!r}: the key is not valid base64") from None
            keys.append(CodecKey(kid.strip(), key))
    if not keys:
        raise CodecError("no codec keys in the configuration")
    kids = [key.kid for key in keys]
    if len(set(kids)) != len(kids):
        raise CodecError(f"duplicate codec key ids in {kids}")
    return keys


def new_key_line(kid: str | None = None) -> str:
    """One 'kid:base64' entry with a fresh random key (`python -m dunning.codec` prints one)."""
    kid = kid or "k" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[CodecKey]) -> None:
        if not keys:
            raise CodecError("EncryptionCodec needs at least one key")
        self.active = keys[0]
        self._ciphers = {key.kid: AESGCM(key.key) for key in keys}

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self.active.kid.encode()
        nonce = secrets.token_bytes(NONCE_BYTES)
        # The key id is authenticated too: a payload cannot be relabelled to another key.
        sealed = self._ciphers[self.active.kid].encrypt(nonce, payload.SerializeToString(), kid)
        return Payload(
            metadata={METADATA_ENCODING: ENCODING, METADATA_KEY_ID: kid, METADATA_CIPHER: CIPHER},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get(METADATA_ENCODING) != ENCODING:
            return payload  # written before encryption was on
        kid = payload.metadata.get(METADATA_KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise UnknownKeyError(
                f"payload is encrypted with key id {kid!r}, which is not configured "
                f"(known: {', '.join(self._ciphers)}); add it to DUNNING_CODEC_KEYS / DUNNING_CODEC_KEY_FILE"
            )
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], kid.encode())
        except InvalidTag:
            raise CodecError(f"payload with key id {kid!r} failed authentication (wrong key or tampered)") from None
        return Payload.FromString(plain)


def data_converter(codec: PayloadCodec | None) -> DataConverter:
    """The engine's converter; with a codec, failure messages and stack traces are encrypted too."""
    if codec is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=codec,
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def configured_keys(settings: Settings) -> list[CodecKey] | None:
    """The keys from the settings; for a dev stack on this machine, the data dir's (generated once)."""
    if settings.dunning_codec_keys and settings.dunning_codec_key_file:
        raise CodecError("set DUNNING_CODEC_KEYS or DUNNING_CODEC_KEY_FILE, not both")
    if settings.dunning_codec_keys:
        return parse_keys(settings.dunning_codec_keys)
    if settings.dunning_codec_key_file:
        return parse_keys(_read(settings.dunning_codec_key_file, "DUNNING_CODEC_KEY_FILE"))
    dev_file = settings.dunning_data_dir / DEV_KEY_FILE
    if dev_file.exists():
        return parse_keys(_read(dev_file, "the dev key file"))
    if _loopback(settings.temporal_target):
        _create_exclusive(dev_file, new_key_line("dev1") + "\n")
        logger.info("payload encryption: generated a dev key in %s", dev_file)
        return parse_keys(_read(dev_file, "the dev key file"))
    if settings.dunning_codec_required:
        raise CodecError("DUNNING_CODEC_REQUIRED is set but no DUNNING_CODEC_KEYS / DUNNING_CODEC_KEY_FILE")
    logger.warning("payload encryption is OFF: customer contact data is stored in plaintext in Temporal")
    return None


def codec_for(settings: Settings) -> EncryptionCodec | None:
    keys = configured_keys(settings)
    return EncryptionCodec(keys) if keys else None


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CodecError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _create_exclusive(path: Path, text: str) -> None:
    """Write 0600 and publish atomically: of processes starting together, the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    try:
        os.link(staging, path)
    except FileExistsError:
        pass
    finally:
        staging.unlink()


def _main(argv: Iterable[str]) -> None:
    args = list(argv)
    print(new_key_line(args[0] if args else None))


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
