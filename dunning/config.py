"""Runtime configuration, read once from the environment (all optional)."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import MutableMapping
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TASK_QUEUE = "dunning"
NAMESPACE = "default"
# Secrets: read from the variable or from the file named by <NAME>_FILE (Docker/Kubernetes secrets).
SECRET_VARIABLES = (
    "DUNNING_API_TOKEN",
    "STRIPE_API_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "SENDGRID_API_KEY",
    "TWILIO_AUTH_TOKEN",
    "TEMPORAL_API_KEY",
)
_SECRET_FIELDS = frozenset(name.lower() for name in SECRET_VARIABLES) | {"dunning_codec_keys", "dunning_export_secret"}


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
    # Collections: hand-off to the collection partner (docs/collections-format.md).
    dunning_partner_fields: str = Field(
        default="name,email,phone,country",
        description="contact fields the partner agreement allows in placements (comma-separated)",
    )
    dunning_merchant_timezone: str = Field(default="UTC", description="IANA zone of the export schedule")
    dunning_export_time: str = Field(default="02:00", description="daily export time (HH:MM, merchant zone)")
    dunning_export_url: str | None = Field(
        default=None, description="sftp://, https:// or file:// destination; unset = $DUNNING_DATA_DIR/exports"
    )
    dunning_export_secret: str | None = Field(default=None, description="HMAC key of https:// deliveries")
    dunning_export_ssh_key_file: Path | None = Field(default=None, description="private key for sftp://")
    dunning_export_known_hosts: Path | None = Field(
        default=None, description="known_hosts for sftp:// (default ~/.ssh/known_hosts)"
    )
    dunning_export_ca_file: Path | None = Field(default=None, description="CA bundle for https://")
    # Production settings (deploy/README.md). Every secret can come from a file: <NAME>_FILE.
    dunning_api_token_file: Path | None = None
    stripe_api_key_file: Path | None = None
    stripe_webhook_secret_file: Path | None = None
    sendgrid_api_key: str | None = None
    sendgrid_api_key_file: Path | None = None
    twilio_auth_token: str | None = None
    twilio_auth_token_file: Path | None = None
    temporal_tls: bool = Field(default=False, description="TLS to the frontend (implied by the cert, CA and API key)")
    temporal_tls_cert: Path | None = Field(default=None, description="mTLS client certificate (PEM file)")
    temporal_tls_key: Path | None = Field(default=None, description="mTLS client private key (PEM file)")
    temporal_tls_ca: Path | None = Field(default=None, description="CA for the server certificate (PEM file)")
    temporal_tls_server_name: str | None = None
    temporal_api_key: str | None = None
    temporal_api_key_file: Path | None = None
    dunning_codec_keys: str | None = Field(
        default=None, description='payload encryption keys "kid:base64key,..."; the first encrypts'
    )
    dunning_codec_key_file: Path | None = None
    dunning_codec_required: bool = Field(default=False, description="refuse to start without codec keys")
    dunning_codec_cors_origins: str | None = Field(
        default=None, description="Temporal UI origins allowed to call /codec (comma-separated)"
    )
    dunning_max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    dunning_webhook_answer_within_ms: int = Field(
        default=25,
        ge=0,
        description="how long a webhook answer waits for its start or signal; then it answers `accepted` and finishes in the background",
    )
    dunning_http_host: str = Field(default="127.0.0.1", description="bind address (0.0.0.0 in a container)")
    database_url_file: Path | None = None
    dunning_codec_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1)

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        for name in (*SECRET_VARIABLES, "DATABASE_URL"):  # the URL may carry a password
            field, file_field = name.lower(), f"{name.lower()}_file"
            path = getattr(self, file_field)
            if path is None:
                continue
            if getattr(self, field):
                raise ValueError(f"set {name} or {name}_FILE, not both")
            try:
                value = Path(path).read_text().strip()
            except OSError as exc:
                raise ValueError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from None
            if not value:
                raise ValueError(f"{name}_FILE={path} is empty")
            object.__setattr__(self, field, value)
        if (self.temporal_tls_cert is None) != (self.temporal_tls_key is None):
            raise ValueError("TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together (mTLS needs both)")
        return self

    def __repr_args__(self):
        # Settings may end up in a log line or a traceback: never with a secret in it.
        for name, value in super().__repr_args__():
            if value and name in _SECRET_FIELDS:
                value = "**********"
            elif value and name == "database_url":
                value = re.sub(r"(//[^:/@]+:)[^/]*@", r"\1**********@", value)
            yield name, value

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
    settings = Settings()
    export_file_secrets(settings)
    return settings


def export_file_secrets(settings: Settings, environ: MutableMapping[str, str] = os.environ) -> None:
    """Put secrets read from *_FILE into the environment: provider modules read os.environ directly."""
    for name in SECRET_VARIABLES:
        value = getattr(settings, name.lower())
        if value and not environ.get(name) and environ.get(f"{name}_FILE"):
            environ[name] = value


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
