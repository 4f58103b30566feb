"""Export delivery on loopback: an in-process asyncssh SFTP server (password and key auth), a signed
HTTPS receiver with its own CA, and file://. Each transport is safe to repeat after a failure."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from activities.collections import build_destination
from activities.file_delivery import FileDestination
from activities.https_delivery import HttpsDestination
from activities.sftp_delivery import SftpDestination
from dunning.collections.config import CollectionsConfig, CollectionsConfigError
from dunning.collections.delivery import DeliveryRefused
from dunning.collections.format import RenderedBatch, render_batch
from dunning.collections.placement import placement_id_for
from dunning.store.records import PlacementRecord

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
DAY = date(2026, 11, 2)
PASSWORD = "pa:ss/wörd@1"  # needs percent-encoding in a URL


def sample_batch() -> RenderedBatch:
    placements = [
        PlacementRecord(
            placement_id=placement_id_for(f"dunning-in_{n}"),
            journey_id=f"dunning-in_{n}",
            payment_reference=f"in_{n}",
            customer_id=f"cus_{n}",
            contact={"name": f"Customer {n}", "email": f"c{n}@example.com"},
            amount=1000 * (n + 1),
            currency="usd",
            first_failure_at=T0 - timedelta(days=60),
            attempts_summary={"count": 9, "last_decline_class": "insufficient_funds"},
            messages_summary={"count_by_channel": {"email": 4}},
            disputed=False,
            policy_version="default@abc",
            created_at=T0 + timedelta(minutes=n),
        )
        for n in range(3)
    ]
    return render_batch("exp-2026-11-02", DAY, placements, [])


def assert_delivered(directory: Path, batch: RenderedBatch) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(f.name for f in batch.files), "no .part left, nothing twice"
    for file in batch.files:
        assert (directory / file.name).read_bytes() == file.content


# --- SFTP ----------------------------------------------------------------------------------------


@dataclass
class SftpServer:
    root: Path
    port: int
    known_hosts: Path
    client_key: Path
    acceptor: Any
    fail_renames: dict[str, int] = field(default_factory=dict)  # file name -> failures left
    renames: list[str] = field(default_factory=list)

    def url(self, directory: str = "/inbox", *, password: bool = True) -> str:
        from urllib.parse import quote

        secret = f":{quote(PASSWORD, safe='')}" if password else ""
        return f"sftp://partner{secret}@127.0.0.1:{self.port}{directory}"

    async def close(self) -> None:
        self.acceptor.close()
        await asyncio.wait_for(self.acceptor.wait_closed(), 10)


async def start_sftp_server(tmp_path: Path) -> SftpServer:
    root = tmp_path / "sftp-root"
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = tmp_path / "id_ed25519"
    client_key.write_private_key(str(client_key_path))
    state = SftpServer(root, 0, tmp_path / "known_hosts", client_key_path, None)

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return username == "partner" and password == PASSWORD

    class FlakySFTP(asyncssh.SFTPServer):
        def __init__(self, chan) -> None:
            super().__init__(chan, chroot=str(root).encode())

        def posix_rename(self, oldpath: bytes, newpath: bytes):
            name = os.path.basename(newpath.decode())
            if state.fail_renames.get(name, 0) > 0:
                state.fail_renames[name] -= 1
                raise asyncssh.SFTPFailure(f"injected failure renaming {name}")
            state.renames.append(name)
            return super().posix_rename(oldpath, newpath)

    state.acceptor = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
        sftp_factory=FlakySFTP,
    )
    state.port = state.acceptor.sockets[0].getsockname()[1]
    public = host_key.export_public_key().decode().strip()
    state.known_hosts.write_text(f"[127.0.0.1]:{state.port} {public}\n")
    return state


@pytest.fixture
async def sftp_server(tmp_path: Path):
    server = await start_sftp_server(tmp_path)
    yield server
    await server.close()


def sftp_config(server: SftpServer, **extra) -> CollectionsConfig:
    return CollectionsConfig(export_url=server.url(), known_hosts=server.known_hosts, **extra)


async def test_sftp_password_upload_renames_each_part_and_repeats_identically(sftp_server: SftpServer):
    destination = build_destination(sftp_config(sftp_server))
    assert isinstance(destination, SftpDestination)
    assert destination.describe() == f"sftp://partner@127.0.0.1:{sftp_server.port}/inbox", "no password in it"
    batch, progress = sample_batch(), []
    await asyncio.to_thread(destination.deliver, batch, progress.append)
    assert progress == [f.name for f in batch.files] == sftp_server.renames, "manifest last"
    assert_delivered(sftp_server.root / "inbox", batch)
    await asyncio.to_thread(destination.deliver, batch)
    assert_delivered(sftp_server.root / "inbox", batch)


async def test_sftp_key_auth(sftp_server: SftpServer):
    config = CollectionsConfig(
        export_url=sftp_server.url("/keyed", password=False),
        known_hosts=sftp_server.known_hosts,
        ssh_key_file=sftp_server.client_key,
    )
    batch = sample_batch()
    await asyncio.to_thread(build_destination(config).deliver, batch)
    assert_delivered(sftp_server.root / "keyed", batch)


async def test_sftp_failure_mid_batch_then_retry_leaves_one_copy(sftp_server: SftpServer):
    destination = build_destination(sftp_config(sftp_server))
    batch = sample_batch()
    sftp_server.fail_renames[batch.manifest_file.name] = 1
    with pytest.raises(asyncssh.SFTPFailure, match="injected"):
        await asyncio.to_thread(destination.deliver, batch)
    inbox = sftp_server.root / "inbox"
    assert (inbox / f"{batch.manifest_file.name}.part").exists() and not (inbox / batch.manifest_file.name).exists()
    await asyncio.to_thread(destination.deliver, batch)
    assert_delivered(inbox, batch)


async def test_sftp_refusals_are_permanent_and_say_what_to_fix(sftp_server: SftpServer, tmp_path: Path):
    wrong = CollectionsConfig(
        export_url=sftp_server.url().replace("pa%3Ass", "nope"), known_hosts=sftp_server.known_hosts
    )
    with pytest.raises(DeliveryRefused, match="authentication failed"):
        await asyncio.to_thread(build_destination(wrong).deliver, sample_batch())
    strangers = tmp_path / "empty_known_hosts"
    strangers.write_text("")
    untrusted = CollectionsConfig(export_url=sftp_server.url(), known_hosts=strangers)
    with pytest.raises(DeliveryRefused, match=rf"host key not trusted .*ssh-keyscan -p {sftp_server.port} 127.0.0.1"):
        await asyncio.to_thread(build_destination(untrusted).deliver, sample_batch())
    assert not (sftp_server.root / "inbox").exists()


# --- HTTPS ---------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test partner CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class Receiver:
    """The partner's endpoint: verifies the documented signature and keeps each Idempotency-Key once."""

    def __init__(self, secret: str, tls: tuple[Path, Path] | None) -> None:
        self.secret = secret.encode()
        self.stored: dict[str, tuple[str, bytes]] = {}  # idempotency key -> (file name, body)
        self.posts = 0
        self.rejected: list[str] = []
        self.fail_once: set[str] = set()  # file names answered 503 the first time
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver.receive(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/collections/inbox"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        self.posts += 1
        name = headers["X-Dunning-File-Name"]
        fields = dict(part.split("=", 1) for part in headers["X-Dunning-Signature"].split(","))
        expected = hmac.new(self.secret, f"{fields['t']}.{name}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["v1"]) or abs(time.time() - int(fields["t"])) > 300:
            self.rejected.append(name)
            return 401
        if hashlib.sha256(body).hexdigest() != headers["X-Dunning-File-Sha256"]:
            return 400
        if name in self.fail_once:
            self.fail_once.discard(name)
            return 503
        self.stored.setdefault(headers["Idempotency-Key"], (name, body))
        return 200

    def files(self) -> dict[str, bytes]:
        return {name: body for name, body in self.stored.values()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def https_receiver(tmp_path: Path):
    ca, cert, key = make_certificates(tmp_path)
    receiver = Receiver("partner-secret", (cert, key))
    receiver.ca = ca
    yield receiver
    receiver.close()


def test_https_signed_posts_verified_by_the_receiver(https_receiver: Receiver):
    config = CollectionsConfig(export_url=https_receiver.url, export_secret="partner-secret", ca_file=https_receiver.ca)
    destination = build_destination(config)
    assert isinstance(destination, HttpsDestination) and destination.describe() == https_receiver.url
    batch = sample_batch()
    destination.deliver(batch)
    assert https_receiver.rejected == [] and https_receiver.posts == len(batch.files)
    assert https_receiver.files() == {f.name: f.content for f in batch.files}
    assert json.loads(https_receiver.files()[batch.manifest_file.name])["export_id"] == "exp-2026-11-02"


def test_https_retry_after_a_5xx_keeps_one_copy_per_file(https_receiver: Receiver):
    config = CollectionsConfig(export_url=https_receiver.url, export_secret="partner-secret", ca_file=https_receiver.ca)
    batch = sample_batch()
    https_receiver.fail_once.add(batch.manifest_file.name)
    with pytest.raises(ConnectionError, match="answered 503"):
        build_destination(config).deliver(batch)
    build_destination(config).deliver(batch)
    assert https_receiver.posts == 2 * len(batch.files)
    assert len(https_receiver.stored) == len(batch.files), "the Idempotency-Key is the same on the retry"
    assert https_receiver.files() == {f.name: f.content for f in batch.files}


def test_https_wrong_secret_is_refused_permanently(https_receiver: Receiver):
    config = CollectionsConfig(export_url=https_receiver.url, export_secret="not-the-secret", ca_file=https_receiver.ca)
    with pytest.raises(DeliveryRefused, match="answered 401"):
        build_destination(config).deliver(sample_batch())
    assert https_receiver.stored == {}


def test_https_checks_the_server_certificate(https_receiver: Receiver):
    import httpx

    config = CollectionsConfig(export_url=https_receiver.url, export_secret="partner-secret")  # no private CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        build_destination(config).deliver(sample_batch())


def test_plain_http_only_on_loopback():
    receiver = Receiver("s", None)
    try:
        build_destination(CollectionsConfig(export_url=receiver.url, export_secret="s")).deliver(sample_batch())
        assert len(receiver.files()) == 5
    finally:
        receiver.close()
    with pytest.raises(CollectionsConfigError, match="not encrypted; use https://"):
        build_destination(CollectionsConfig(export_url="http://partner.example/in", export_secret="s"))


# --- file:// and URL checks ----------------------------------------------------------------------


def test_file_destination_is_atomic_and_repeatable(tmp_path: Path):
    destination = build_destination(CollectionsConfig(export_url=(tmp_path / "out dir").as_uri()))
    assert isinstance(destination, FileDestination) and destination.directory == tmp_path / "out dir"
    batch = sample_batch()
    destination.deliver(batch)
    destination.deliver(batch)
    assert_delivered(tmp_path / "out dir", batch)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (CollectionsConfig(export_url="ftp://partner.example/in"), "scheme 'ftp' is not supported"),
        (CollectionsConfig(export_url="/just/a/path"), "scheme '(none)' is not supported"),
        (CollectionsConfig(export_url="file://server/share"), "not host 'server'"),
        (CollectionsConfig(export_url="sftp://partner.example/in"), "needs a user and a host"),
        (CollectionsConfig(export_url="sftp://bob@partner.example/in"), "no password in the URL and no DUNNING_EXPORT_SSH_KEY_FILE"),
        (CollectionsConfig(export_url="https://partner.example/in"), "DUNNING_EXPORT_SECRET is required"),
        (CollectionsConfig(export_url="https://u:p@partner.example/in", export_secret="s"), "remove user:password@"),
        (CollectionsConfig(export_url="https://partner.example/in", export_secret="s", ca_file=Path("/nonexistent/ca.pem")), "DUNNING_EXPORT_CA_FILE=/nonexistent/ca.pem: no such file"),
        (CollectionsConfig(export_url="sftp://bob@partner.example/in", ssh_key_file=Path("/nonexistent/id")), "DUNNING_EXPORT_SSH_KEY_FILE=/nonexistent/id: no such file"),
    ],
)
def test_bad_export_urls_name_the_fix(config: CollectionsConfig, message: str):
    with pytest.raises(CollectionsConfigError, match=f"DUNNING_EXPORT_URL: .*{message}".replace("(", r"\(").replace(")", r"\)")):
        build_destination(config)
