"""The engine's vocabulary: message channels, journey stages and policy step actions.

Compiled with the engine (Makefile, COMPILED): compiled code then reads a member such as
`Stage.recovered` as a constant, where reading a member of an interpreted enum is a lookup through
its metaclass in Python, about a tenth of a microsecond, many times per journey.
"""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    email = "email"
    sms = "sms"
    in_app = "in_app"


class Stage(StrEnum):
    """Where a journey is. The last three are terminal."""

    retrying = "retrying"
    awaiting_customer = "awaiting_customer"
    paused = "paused"
    recovered = "recovered"
    cancelled = "cancelled"
    handed_off = "handed_off"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STAGES


TERMINAL_STAGES = frozenset({Stage.recovered, Stage.cancelled, Stage.handed_off})


class Action(StrEnum):
    retry = "retry"
    notify = "notify"
    incentive = "incentive"
    restrict_access = "restrict_access"
    reactivate = "reactivate"
    cancel_subscription = "cancel_subscription"
    write_off = "write_off"
    hand_off = "hand_off"
