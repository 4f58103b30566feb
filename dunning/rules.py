"""The numbers an ops policy sets for retries and timing: network limits, caps, retry hours,
paydays and quiet hours. Validated when a policy is loaded.

Kept out of the budget and timing modules that obey them, which mypyc compiles (Makefile,
COMPILED): pydantic cannot build models from compiled classes.
"""

from __future__ import annotations

from datetime import time, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from dunning.durations import Duration
from dunning.models import Frozen

MASTERCARD_02_MINIMUM = timedelta(hours=72)
LAST_BUSINESS_DAY: Final = "last_business_day"


def load_zone(name: str | None) -> ZoneInfo | None:
    """The IANA zone of that name; None for no name or an unknown one."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        return None


class RetryLimits(Frozen):
    """Network limits and policy caps; every field can be set in the ops policy YAML."""

    visa_reattempts_30d: int = Field(
        default=15, ge=1, description="Visa reattempts per card+amount in 30 days (2026 rule: 20)"
    )
    mastercard_attempts_24h: int = Field(default=10, ge=1)
    mastercard_attempts_30d: int = Field(default=35, ge=1)
    mastercard_02_delay: Duration = Field(
        default=MASTERCARD_02_MINIMUM, description="wait after MAC 02; the network asks for >= 72h"
    )
    max_attempts_per_payment_method: int = Field(
        default=8,
        ge=1,
        description="this journey's attempts on one method, initial failure included",
    )
    max_attempts_per_journey: int = Field(
        default=12, ge=0, description="this journey's retries; the initial failure is not counted"
    )

    @field_validator("mastercard_02_delay")
    @classmethod
    def _mac_02_floor(cls, value: timedelta) -> timedelta:
        if value < MASTERCARD_02_MINIMUM:
            raise ValueError("Mastercard MAC 02 requires waiting at least 72h")
        return value


class TimingRules(Frozen):
    """The timing part of the ops policy."""

    merchant_timezone: str = "UTC"
    paydays: tuple[int | Literal["last_business_day"], ...] = (1, 15, LAST_BUSINESS_DAY)
    retry_hours: tuple[time, time] = (time(9), time(12))
    business_hours: tuple[time, time] = (time(9), time(17))
    quiet_hours_end: time = time(8)
    quiet_hours_start: time = time(21)
    jitter: Duration = timedelta(minutes=30)

    @field_validator("merchant_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if load_zone(value) is None:
            raise ValueError(
                f"unknown time zone {value!r}: use an IANA name such as 'UTC', "
                "'America/New_York' or 'Europe/Bucharest'"
            )
        return value

    @field_validator("paydays")
    @classmethod
    def _valid_paydays(cls, value: tuple[int | str, ...]) -> tuple[int | str, ...]:
        for day in value:
            if isinstance(day, int) and not 1 <= day <= 31:
                raise ValueError(
                    f"payday {day} must be a day of the month (1..31) or 'last_business_day'"
                )
        return value

    @field_validator("retry_hours", "business_hours")
    @classmethod
    def _ordered_window(cls, value: tuple[time, time]) -> tuple[time, time]:
        start, end = value
        if start.tzinfo is not None or end.tzinfo is not None:
            raise ValueError("hours are local wall-clock times: drop the UTC offset")
        if not start < end:
            raise ValueError(f"window start {start} must be before its end {end}")
        return value

    @field_validator("quiet_hours_end", "quiet_hours_start")
    @classmethod
    def _naive_time(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("quiet hours are local wall-clock times: drop the UTC offset")
        return value

    @field_validator("jitter")
    @classmethod
    def _non_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("jitter must not be negative")
        return value

    @model_validator(mode="after")
    def _quiet_order(self) -> TimingRules:
        # Messages are allowed in [quiet_hours_end, quiet_hours_start) on the same local day.
        if not self.quiet_hours_end < self.quiet_hours_start:
            raise ValueError(
                f"quiet_hours_end ({self.quiet_hours_end}) must be before "
                f"quiet_hours_start ({self.quiet_hours_start})"
            )
        return self
