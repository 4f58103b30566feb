"""Export delivery by signed HTTPS POST, one request per file (manifest last).

Headers (docs/collections-format.md): `X-Dunning-Signature: t=<unix>,v1=<hex>` with
hex = HMAC-SHA256(DUNNING_EXPORT_SECRET, "<t>.<file name>." + body), plus the export id, file
name, SHA-256 and an Idempotency-Key that is the same on every retry of the same file.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from dunning.collections.delivery import DeliveryRefused
from dunning.collections.format import RenderedBatch

REQUEST_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
SIGNATURE_HEADER = "X-Dunning-Signature"
# Client errors that mean "try later" rather than "never": retried like 3xx/5xx.
TRANSIENT_CLIENT_ERRORS = frozenset({408, 425, 429})


def sign(secret: str, timestamp: int, name: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.{name}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpsDestination:
    def __init__(self, url: str, *, secret: str | None, ca_file: Path | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme == "http" and not _loopback(parts.hostname or ""):
            raise ValueError(f"DUNNING_EXPORT_URL: {parts.scheme}://{parts.hostname} is not encrypted; use https://")
        if not secret:
            raise ValueError("DUNNING_EXPORT_SECRET is required for https:// deliveries (the HMAC-SHA256 key)")
        if parts.username or parts.password:
            raise ValueError("DUNNING_EXPORT_URL: https:// deliveries authenticate by signature; remove user:password@")
        if ca_file is not None and not Path(ca_file).is_file():
            raise ValueError(f"DUNNING_EXPORT_CA_FILE={ca_file}: no such file; give the PEM bundle of the partner's CA")
        self.url, self.secret = url, secret
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True

    def describe(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def deliver(self, batch: RenderedBatch, progress: Callable[[str], None] = lambda _name: None) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT, verify=self.verify, follow_redirects=False) as http:
            for file in batch.files:
                headers = {
                    "Content-Type": file.media_type,
                    "X-Dunning-Export-Id": batch.export_id,
                    "X-Dunning-File-Name": file.name,
                    "X-Dunning-File-Sha256": file.sha256,
                    "Idempotency-Key": f"{batch.export_id}/{file.name}/{file.sha256[:16]}",
                    SIGNATURE_HEADER: sign(self.secret, int(time.time()), file.name, file.content),
                }
                response = http.post(self.url, content=file.content, headers=headers)
                if response.status_code >= 300:
                    message = f"{self.describe()} answered {response.status_code} for {file.name}: {response.text[:200]}"
                    if 400 <= response.status_code < 500 and response.status_code not in TRANSIENT_CLIENT_ERRORS:
                        raise DeliveryRefused(message)
                    raise ConnectionError(message)  # transient, retried
                progress(file.name)
