"""Export delivery to the collection partner's SFTP server (asyncssh).

`sftp://user:password@host:port/dir`, or key auth with DUNNING_EXPORT_SSH_KEY_FILE. The host key
is always checked (DUNNING_EXPORT_KNOWN_HOSTS, else ~/.ssh/known_hosts).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable
from pathlib import Path

import asyncssh

from dunning.collections.delivery import DeliveryRefused
from dunning.collections.format import RenderedBatch

CONNECT_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 600.0  # the whole batch; the activity's start-to-close is longer


class SftpDestination:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        directory: str,
        password: str | None = None,
        key_file: Path | None = None,
        known_hosts: Path | None = None,
        timeout: float = DELIVERY_TIMEOUT,
    ) -> None:
        if password is None and key_file is None:
            raise ValueError(
                f"sftp://{username}@{host}:{port}: no password in the URL and no DUNNING_EXPORT_SSH_KEY_FILE; give one"
            )
        for variable, path in (("DUNNING_EXPORT_SSH_KEY_FILE", key_file), ("DUNNING_EXPORT_KNOWN_HOSTS", known_hosts)):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{variable}={path}: no such file")
        self.host, self.port, self.username = host, port, username
        self.directory = directory or "."
        self.password, self.key_file, self.known_hosts = password, key_file, known_hosts
        self.timeout = timeout

    def describe(self) -> str:
        path = "" if self.directory == "." else self.directory if self.directory.startswith("/") else f"/{self.directory}"
        return f"sftp://{self.username}@{self.host}:{self.port}{path}"

    def deliver(self, batch: RenderedBatch, progress: Callable[[str], None] = lambda _name: None) -> None:
        try:
            asyncio.run(asyncio.wait_for(self._deliver(batch, progress), self.timeout))
        except asyncssh.PermissionDenied as exc:
            raise DeliveryRefused(f"{self.describe()}: authentication failed ({exc.reason}); check the user, password or key") from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            raise DeliveryRefused(
                f"{self.describe()}: host key not trusted ({exc.reason}); add it to DUNNING_EXPORT_KNOWN_HOSTS "
                f"(ssh-keyscan -p {self.port} {self.host})"
            ) from exc
        except asyncssh.SFTPPermissionDenied as exc:
            raise DeliveryRefused(f"{self.describe()}: permission denied ({exc.reason}); the partner must allow writes there") from exc

    async def _deliver(self, batch: RenderedBatch, progress: Callable[[str], None]) -> None:
        options: dict = {
            "username": self.username,
            "password": self.password,
            "client_keys": [str(self.key_file)] if self.key_file else None,
            "agent_path": None,  # only the configured credentials, never the operator's agent
            "connect_timeout": CONNECT_TIMEOUT,
        }
        if self.known_hosts is not None:
            options["known_hosts"] = str(self.known_hosts)
        async with asyncssh.connect(self.host, self.port, **options) as conn, conn.start_sftp_client() as sftp:
            await sftp.makedirs(self.directory, exist_ok=True)
            for file in batch.files:
                final = posixpath.join(self.directory, file.name)
                part = final + ".part"
                async with sftp.open(part, "wb") as handle:
                    await handle.write(file.content)
                await self._replace(sftp, part, final)
                progress(file.name)

    @staticmethod
    async def _replace(sftp: asyncssh.SFTPClient, part: str, final: str) -> None:
        try:
            await sftp.posix_rename(part, final)  # atomic replace (OpenSSH extension)
        except asyncssh.SFTPOpUnsupported:
            # Plain SFTP rename refuses an existing target: remove the old copy first.
            if await sftp.exists(final):
                await sftp.remove(final)
            await sftp.rename(part, final)
