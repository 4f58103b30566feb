"""Runtime configuration, read once from the environment (all optional)."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TASK_QUEUE = "dunning"
NAMESPACE = "default"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    dunning_data_dir: Path = Path("data")
    dunning_http_port: int = 8000
    temporal_dev_port: int = 7233
    temporal_ui_port: int = 8233
    temporal_address: str | None = Field(
        default=None, description="external Temporal frontend host:port; unset = embedded dev server"
    )
    temporal_namespace: str = NAMESPACE
    dunning_policy: Path = Path("policies/default.yaml")
    dunning_api_token: str | None = None
    database_url: str | None = None
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = None
    dunning_public_url: str | None = Field(
        default=None, description="how customers reach this service (links in messages)"
    )

    @property
    def temporal_target(self) -> str:
        return self.temporal_address or f"127.0.0.1:{self.temporal_dev_port}"

    @property
    def embedded_temporal(self) -> bool:
        return self.temporal_address is None

    @property
    def public_url(self) -> str:
        return (self.dunning_public_url or f"http://127.0.0.1:{self.dunning_http_port}").rstrip("/")

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.dunning_data_dir / 'dunning.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def api_token(settings: Settings) -> str:
    """DUNNING_API_TOKEN, else a random token kept in the data dir (0600) and shown by `make up`."""
    if settings.dunning_api_token:
        return settings.dunning_api_token
    path = settings.dunning_data_dir / "api-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        try:
            os.link(staging, path)  # atomic: the first process to link wins, the others read its token
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip()
