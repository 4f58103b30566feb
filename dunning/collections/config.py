"""Collections settings, checked once: a bad value stops the worker at start, not a journey at its end."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dunning.config import Settings

# Customer fields a partner agreement may cover; placements carry only the agreed ones.
CONTACT_FIELDS: tuple[str, ...] = ("name", "email", "phone", "country", "locale", "timezone")
DEFAULT_PARTNER_FIELDS: tuple[str, ...] = ("name", "email", "phone", "country")


class CollectionsConfigError(ValueError):
    """A collections setting that cannot work; the message names the variable and the fix."""


def parse_partner_fields(value: str) -> tuple[str, ...]:
    fields = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    unknown = [name for name in fields if name not in CONTACT_FIELDS]
    if unknown:
        raise CollectionsConfigError(
            f"DUNNING_PARTNER_FIELDS: unknown contact field(s) {', '.join(map(repr, unknown))}; "
            f"use a comma-separated subset of {','.join(CONTACT_FIELDS)} (empty shares none)"
        )
    return tuple(dict.fromkeys(fields))


def parse_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise CollectionsConfigError(
            f"DUNNING_MERCHANT_TIMEZONE: {value!r} is not an IANA time zone; use e.g. UTC or Europe/Bucharest"
        ) from None
    return value


def parse_export_time(value: str) -> time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise CollectionsConfigError(
            f"DUNNING_EXPORT_TIME: {value!r} is not a time of day; use HH:MM (24 h), e.g. 02:00"
        )
    return time(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class CollectionsConfig:
    export_url: str
    partner_fields: tuple[str, ...] = DEFAULT_PARTNER_FIELDS
    merchant_timezone: str = "UTC"
    export_time: time = time(2, 0)
    export_secret: str | None = field(default=None, repr=False)
    ssh_key_file: Path | None = None
    known_hosts: Path | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.partner_fields if name not in CONTACT_FIELDS]
        if unknown:
            raise CollectionsConfigError(f"partner_fields: unknown contact field(s) {unknown}; allowed {CONTACT_FIELDS}")
        parse_timezone(self.merchant_timezone)

    @classmethod
    def from_settings(cls, settings: Settings) -> CollectionsConfig:
        url = settings.dunning_export_url or (settings.dunning_data_dir.expanduser().resolve() / "exports").as_uri()
        return cls(
            export_url=url,
            partner_fields=parse_partner_fields(settings.dunning_partner_fields),
            merchant_timezone=parse_timezone(settings.dunning_merchant_timezone),
            export_time=parse_export_time(settings.dunning_export_time),
            export_secret=settings.dunning_export_secret,
            ssh_key_file=settings.dunning_export_ssh_key_file,
            known_hosts=settings.dunning_export_known_hosts,
            ca_file=settings.dunning_export_ca_file,
        )
