"""Recovery reports, computed from the store (SQL aggregates that run on SQLite and PostgreSQL).

Definitions (the README's "Reports" section says the same for ops):

- **Scope**: journeys whose payment failed (`started_at`) on or after `since` (UTC); all journeys
  without it. Open journeys count as not recovered (yet).
- **Recovered**: stage `recovered` (by a retry or paid out of band).
- **Recovery rate**: recovered / journeys. **By amount**: recovered amount / amount due, per
  currency; amounts are minor units and currencies are never added together.
- **Days to recovery**: `recovered_at - started_at` in days; the median over recovered journeys.
- **Attempts per recovery**: retries (the failure that opened the journey not counted) of the
  recovered journeys / recovered journeys.
- **Messages sent**: messages with status `sent` created before the journey recovered (the
  confirmation sent after recovery is not dunning). **Messages per recovery**: those sent to
  recovered journeys / recovered journeys.
- **Step reached**: a journey reached a step when it made a retry (`card_attempts`) or handled a
  message (`messages`, any status: a skipped message still means the step ran) for that step
  before it recovered. Prompt retries (`prompt-<n>`: a new card or ops' retry-now) are one step,
  `prompt`. Escalation steps (restrict, cancel, hand-off) leave no such row and are not steps here;
  the stage shows where a journey ended.
- **Group by step**: the retry step that recovered the journey; otherwise (open, lost, or paid
  out of band) the last step it reached before that; none when it reached no step yet.
- **Group by channel**: a journey counts in every channel on which at least one message was sent
  to it before it recovered ("exposed"), so rows overlap and do not add up to the totals; the
  recoveries of a channel are its exposed journeys that recovered (necessarily after the first
  such message), and its messages are those sent on that channel. Journeys sent nothing are the
  row without a channel.
- **Over time** (per UTC day, or ISO week starting Monday): `journeys`/`recovered` are the cohort
  that failed in the period and how many of it recovered so far; `recoveries` and
  `recovered_amount` count recoveries that happened in the period.
- **Funnel**: the payment failure (every journey; "recovered" there = paid out of band before any
  step), then every step in ladder order (the policies the journeys are on; other steps after, by
  name, `prompt` last) with the journeys that reached it and those recovered at it (as in group
  by step).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    ColumnElement,
    Date,
    FromClause,
    String,
    and_,
    case,
    cast,
    distinct,
    exists,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from dunning.enums import TERMINAL_STAGES, Stage
from dunning.policy import PolicyError, parse_policy
from dunning.store import JourneyRecord, Store
from dunning.store.schema import CardAttempt, Journey, Message, Policy

PROMPT_STEP = "prompt"
MAX_PERIODS = 1000  # a chart or table longer than this is unreadable; ask for weeks instead
AUTO_DAY_SPAN = timedelta(days=92)  # up to about a quarter per day, longer per week

J, CA, M = Journey.__table__.c, CardAttempt.__table__.c, Message.__table__.c
_RECOVERED = Stage.recovered.value
_OPEN = tuple(stage.value for stage in Stage if stage not in TERMINAL_STAGES)


class GroupBy(StrEnum):
    decline_class = "decline_class"
    step = "step"
    channel = "channel"
    segment = "segment"
    variant = "variant"


# What a group without a key (None) means, per grouping (the others: "unknown").
NO_KEY_LABELS: dict[str, str] = {
    GroupBy.step: "before any step",
    GroupBy.channel: "no message sent",
    GroupBy.variant: "no experiment",
}


class Interval(StrEnum):
    day = "day"
    week = "week"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CurrencyFigures(_Model):
    journeys: int
    amount_due: int
    recovered_amount: int
    recovery_rate_by_amount: float | None


class GroupFigures(_Model):
    key: str | None
    journeys: int
    open: int
    recovered: int
    recovery_rate: float | None
    currencies: dict[str, CurrencyFigures]
    median_days_to_recovery: float | None
    attempts_per_recovery: float | None
    messages_sent: int
    messages_per_recovery: float | None


class PeriodFigures(_Model):
    period: date
    journeys: int
    recovered: int
    recovery_rate: float | None
    recoveries: int
    recovered_amount: dict[str, int]


class FunnelStep(_Model):
    step: str | None  # None: the payment failure every journey starts with
    reached: int
    reached_rate: float | None
    recovered: int
    recovery_rate: float | None


class RecoveryReport(_Model):
    generated_at: datetime
    since: datetime | None
    by: GroupBy
    interval: Interval
    totals: GroupFigures
    groups: list[GroupFigures]
    over_time: list[PeriodFigures]
    funnel: list[FunnelStep]


class ReportError(ValueError):
    """The report cannot be produced for these arguments (message says which and why)."""


# -- public API ---------------------------------------------------------------------------------


def parse_since(value: str | date | datetime | None) -> datetime | None:
    """`2026-03-01` (UTC midnight) or an ISO datetime with an offset; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        text = value.strip()
        try:
            if len(text) == 10:
                return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ReportError(
                f"since={value!r} is not a date: use YYYY-MM-DD (UTC) or an ISO datetime with an "
                "offset, e.g. 2026-03-01 or 2026-03-01T09:00:00+01:00"
            ) from None
    if parsed.utcoffset() is None:
        raise ReportError(f"since={value!r} has no UTC offset: add one (e.g. Z or +01:00) or give a date")
    return parsed.astimezone(UTC)


def recovery_report(
    store: Store,
    *,
    since: datetime | None = None,
    by: GroupBy | str = GroupBy.decline_class,
    interval: Interval | str | None = None,
    now: datetime | None = None,
) -> RecoveryReport:
    """The whole report, read in one transaction so its figures agree with each other."""
    by = _enum(GroupBy, by, "by")
    chosen = _enum(Interval, interval, "interval") if interval is not None else None
    scope = _scope(since)
    with read_snapshot(store) as conn:
        totals = _figures(conn, _all_group(scope), scope, channel=False)
        total = totals[0] if totals else _empty(None)
        step_groups = _figures(conn, _step_group(scope), scope, channel=False)
        order = _step_order(conn, scope)
        groups = step_groups if by is GroupBy.step else _breakdown(conn, scope, by)
        over_time, used = _over_time(conn, scope, chosen)
        funnel = _funnel(conn, scope, total.journeys, step_groups, order)
    return RecoveryReport(
        generated_at=now or datetime.now(UTC),
        since=since,
        by=by,
        interval=used,
        totals=total.model_copy(update={"key": None}),
        groups=_sorted_groups(groups, order if by is GroupBy.step else None),
        over_time=over_time,
        funnel=funnel,
    )


def breakdown(store: Store, *, since: datetime | None = None, by: GroupBy | str) -> list[GroupFigures]:
    """Only the groups of one breakdown (the dashboard shows several)."""
    by = _enum(GroupBy, by, "by")
    scope = _scope(since)
    with read_snapshot(store) as conn:
        if by is GroupBy.step:
            return _sorted_groups(_figures(conn, _step_group(scope), scope, channel=False), _step_order(conn, scope))
        return _sorted_groups(_breakdown(conn, scope, by), None)


def open_journeys(store: Store, *, limit: int = 100) -> tuple[list[JourneyRecord], int]:
    """Journeys not yet ended, soonest next action first, and how many there are in all."""
    if limit < 1:
        raise ReportError(f"limit must be at least 1, not {limit}")
    where = J.stage.in_(_OPEN)
    with read_snapshot(store) as conn:
        count = conn.scalar(select(func.count()).select_from(Journey.__table__).where(where)) or 0
        rows = conn.execute(
            select(Journey)
            .where(where)
            .order_by(J.next_action_at.is_(None), J.next_action_at, J.journey_id)
            .limit(limit)
        ).scalars()
        # Loaded through the ORM so the UTC type and JSON columns convert as everywhere else.
        return [JourneyRecord.model_validate(row) for row in rows], int(count)


# -- scope and snapshot -------------------------------------------------------------------------


def _enum(kind: type[StrEnum], value: Any, name: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = "|".join(member.value for member in kind)
        raise ReportError(f"{name}={value!r} is not one of {allowed}") from None


def _scope(since: datetime | None) -> list[ColumnElement[bool]]:
    if since is not None and since.utcoffset() is None:
        raise ReportError("since must be timezone-aware (UTC)")
    return [] if since is None else [J.started_at >= since]


@contextmanager
def read_snapshot(store: Store) -> Iterator[Session]:
    """A read-only transaction with one consistent view (REPEATABLE READ on PostgreSQL)."""
    engine = store.engine
    if store.dialect == "postgresql":
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    with Session(engine) as session:  # closing rolls back: reports only read
        yield session


def _before_recovery(at: Any) -> ColumnElement[bool]:
    return or_(J.stage != _RECOVERED, J.recovered_at.is_(None), at <= J.recovered_at)


def _step(column: Any) -> Any:
    return case((column.like("prompt-%"), literal_column(f"'{PROMPT_STEP}'", String)), else_=column)


# -- groups -------------------------------------------------------------------------------------


def _all_group(scope: list[ColumnElement[bool]]) -> FromClause:
    return select(J.journey_id, literal_column("'*'", String).label("key")).where(*scope).subquery("g")


def _column_group(scope: list[ColumnElement[bool]], column: Any) -> FromClause:
    return select(J.journey_id, column.label("key")).where(*scope).subquery("g")


def _events(scope: list[ColumnElement[bool]]) -> FromClause:
    """Every step each journey in scope reached before it recovered, with when."""
    attempts = (
        select(CA.journey_id, _step(CA.step_id).label("step"), CA.at.label("at"), literal_column("1").label("kind"))
        .join(Journey.__table__, J.journey_id == CA.journey_id)
        .where(CA.attempt_number >= 1, CA.step_id.is_not(None), _before_recovery(CA.at), *scope)
    )
    messages = (
        select(M.journey_id, M.step_id.label("step"), M.created_at.label("at"), literal_column("0").label("kind"))
        .join(Journey.__table__, J.journey_id == M.journey_id)
        .where(_before_recovery(M.created_at), *scope)
    )
    return union_all(attempts, messages).subquery("events")


def _step_group(scope: list[ColumnElement[bool]]) -> FromClause:
    events = _events(scope)
    ranked = select(
        events.c.journey_id,
        events.c.step,
        func.row_number()
        .over(
            partition_by=events.c.journey_id,
            order_by=(events.c.at.desc(), events.c.kind.desc(), events.c.step.desc()),
        )
        .label("rank"),
    ).subquery("ranked")
    last = select(ranked.c.journey_id, ranked.c.step).where(ranked.c.rank == 1).subquery("last_step")
    by_retry = and_(J.recovered_via == "retry", J.recovered_step.is_not(None), J.stage == _RECOVERED)
    key = case((by_retry, _step(J.recovered_step)), else_=last.c.step)
    return (
        select(J.journey_id, key.label("key"))
        .select_from(Journey.__table__.outerjoin(last, last.c.journey_id == J.journey_id))
        .where(*scope)
        .subquery("g")
    )


def _channel_group(scope: list[ColumnElement[bool]]) -> FromClause:
    sent = and_(M.journey_id == J.journey_id, M.status == "sent", _before_recovery(M.created_at))
    exposed = (
        select(J.journey_id, M.channel.label("key"))
        .join(Message.__table__, sent)
        .where(*scope)
        .distinct()
    )
    unexposed = select(J.journey_id, cast(null(), String).label("key")).where(
        *scope, ~exists().where(sent)
    )
    return union_all(exposed, unexposed).subquery("g")


def _breakdown(conn: Any, scope: list[ColumnElement[bool]], by: GroupBy) -> list[GroupFigures]:
    if by is GroupBy.channel:
        return _figures(conn, _channel_group(scope), scope, channel=True)
    column = {GroupBy.decline_class: J.decline_class, GroupBy.segment: J.segment, GroupBy.variant: J.variant}[by]
    return _figures(conn, _column_group(scope, column), scope, channel=False)


def _figures(conn: Any, g: FromClause, scope: list[ColumnElement[bool]], *, channel: bool) -> list[GroupFigures]:
    """Per key of `g` (journey_id, key): counts, amounts per currency, durations, messages."""
    recovered = J.stage == _RECOVERED
    joined = g.join(Journey.__table__, J.journey_id == g.c.journey_id)
    counts = conn.execute(
        select(
            g.c.key,
            func.count(),
            func.sum(case((J.stage.in_(_OPEN), 1), else_=0)),
            func.sum(case((recovered, 1), else_=0)),
            func.sum(case((recovered, J.attempts_count), else_=0)),
        )
        .select_from(joined)
        .group_by(g.c.key)
    ).all()
    amounts: dict[Any, dict[str, CurrencyFigures]] = defaultdict(dict)
    for key, currency, journeys, due, recovered_amount in conn.execute(
        select(g.c.key, J.currency, func.count(), func.sum(J.amount), func.sum(J.recovered_amount))
        .select_from(joined)
        .group_by(g.c.key, J.currency)
        .order_by(J.currency)
    ):
        due, recovered_amount = int(due or 0), int(recovered_amount or 0)
        amounts[key][currency] = CurrencyFigures(
            journeys=int(journeys),
            amount_due=due,
            recovered_amount=recovered_amount,
            recovery_rate_by_amount=_rate(recovered_amount, due),
        )
    on_message = and_(
        M.journey_id == g.c.journey_id, M.status == "sent", _before_recovery(M.created_at),
        *([M.channel == g.c.key] if channel else []),
    )
    messages = {
        key: (int(sent), int(to_recovered or 0))
        for key, sent, to_recovered in conn.execute(
            select(g.c.key, func.count(M.id), func.sum(case((recovered, 1), else_=0)))
            .select_from(joined.join(Message.__table__, on_message))
            .group_by(g.c.key)
        )
    }
    days: dict[Any, list[float]] = defaultdict(list)
    for key, started_at, recovered_at in conn.execute(
        select(g.c.key, J.started_at, J.recovered_at)
        .select_from(joined)
        .where(recovered, J.recovered_at.is_not(None))
    ):
        days[key].append((_utc(recovered_at) - _utc(started_at)).total_seconds() / 86400)
    result = []
    for key, journeys, open_, recovered_count, attempts in counts:
        recovered_count, attempts = int(recovered_count or 0), int(attempts or 0)
        sent, sent_to_recovered = messages.get(key, (0, 0))
        result.append(
            GroupFigures(
                key=key,
                journeys=int(journeys),
                open=int(open_ or 0),
                recovered=recovered_count,
                recovery_rate=_rate(recovered_count, journeys),
                currencies=amounts.get(key, {}),
                median_days_to_recovery=round(statistics.median(days[key]), 2) if days.get(key) else None,
                attempts_per_recovery=_per(attempts, recovered_count),
                messages_sent=sent,
                messages_per_recovery=_per(sent_to_recovered, recovered_count),
            )
        )
    return result


def _sorted_groups(groups: list[GroupFigures], order: dict[str, tuple] | None) -> list[GroupFigures]:
    """Steps in ladder order; other keys by journeys (most first), then name; no key last."""
    if order is not None:
        return sorted(groups, key=lambda g: (g.key is None, order.get(g.key or "", (2,)), g.key or ""))
    return sorted(groups, key=lambda g: (g.key is None, -g.journeys, g.key or ""))


# -- over time ----------------------------------------------------------------------------------


def _period(conn: Any, column: Any, interval: Interval) -> Any:
    # Constants inline (not bound): PostgreSQL must see GROUP BY and SELECT as the same expression.
    if conn.get_bind().dialect.name == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        if interval is Interval.week:
            utc = func.date_trunc(literal_column("'week'"), utc)
        return cast(utc, Date)
    if interval is Interval.week:  # the Sunday on or after, minus 6 days: the ISO week's Monday
        return func.date(column, literal_column("'weekday 0'"), literal_column("'-6 days'"))
    return func.date(column)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _over_time(
    conn: Any, scope: list[ColumnElement[bool]], interval: Interval | None
) -> tuple[list[PeriodFigures], Interval]:
    span = conn.execute(
        select(func.min(J.started_at), func.max(func.coalesce(J.recovered_at, J.started_at))).where(*scope)
    ).one()
    if span[0] is None:
        return [], interval or Interval.day
    first, last = _utc(span[0]), _utc(span[1])
    if interval is None:
        interval = Interval.day if last - first <= AUTO_DAY_SPAN else Interval.week
    started = _period(conn, J.started_at, interval)
    cohort = {
        _as_date(period): (int(journeys), int(recovered or 0))
        for period, journeys, recovered in conn.execute(
            select(started, func.count(), func.sum(case((J.stage == _RECOVERED, 1), else_=0)))
            .where(*scope)
            .group_by(started)
        )
    }
    ended = _period(conn, J.recovered_at, interval)
    recoveries: dict[date, int] = defaultdict(int)
    amounts: dict[date, dict[str, int]] = defaultdict(dict)
    for period, currency, count, amount in conn.execute(
        select(ended, J.currency, func.count(), func.sum(J.recovered_amount))
        .where(*scope, J.stage == _RECOVERED, J.recovered_at.is_not(None))
        .group_by(ended, J.currency)
        .order_by(J.currency)
    ):
        recoveries[_as_date(period)] += int(count)
        amounts[_as_date(period)][currency] = int(amount or 0)
    periods = sorted(set(cohort) | set(recoveries))
    step = timedelta(days=1 if interval is Interval.day else 7)
    count = (periods[-1] - periods[0]) // step + 1
    if count > MAX_PERIODS:
        raise ReportError(
            f"{count} {interval.value}s between {periods[0]} and {periods[-1]} is too many to show: "
            "use interval=week or a later since"
        )
    result = []
    for index in range(count):
        period = periods[0] + index * step
        journeys, recovered = cohort.get(period, (0, 0))
        result.append(
            PeriodFigures(
                period=period,
                journeys=journeys,
                recovered=recovered,
                recovery_rate=_rate(recovered, journeys),
                recoveries=recoveries.get(period, 0),
                recovered_amount=amounts.get(period, {}),
            )
        )
    return result, interval


# -- funnel -------------------------------------------------------------------------------------


def _step_order(conn: Any, scope: list[ColumnElement[bool]]) -> dict[str, tuple]:
    """Step id -> sort key: earliest offset in any ladder of the policies the journeys are on."""
    versions = select(J.policy_version).where(*scope, J.policy_version.is_not(None)).distinct()
    offsets: dict[str, timedelta] = {}
    for version, text in conn.execute(
        select(Policy.__table__.c.version, Policy.__table__.c.yaml).where(
            Policy.__table__.c.version.in_(versions)
        )
    ):
        try:
            policy = parse_policy(text, version)
        except PolicyError:
            continue  # a stored policy this version cannot read: its steps sort by name
        ladders: list[Sequence[Any]] = [policy.steps]
        for segment in policy.segments:
            ladders.append(segment.steps or ())
            ladders.extend(variant.steps for variant in segment.variants)
        for ladder in ladders:
            for step in ladder:
                if step.id not in offsets or step.at < offsets[step.id]:
                    offsets[step.id] = step.at
    order: dict[str, tuple] = {step_id: (0, at) for step_id, at in offsets.items()}
    order.setdefault(PROMPT_STEP, (1,))
    return order


def _funnel(
    conn: Any,
    scope: list[ColumnElement[bool]],
    total: int,
    step_groups: Iterable[GroupFigures],
    order: dict[str, tuple],
) -> list[FunnelStep]:
    events = _events(scope)
    reached = {
        step: int(count)
        for step, count in conn.execute(
            select(events.c.step, func.count(distinct(events.c.journey_id))).group_by(events.c.step)
        )
    }
    recovered_at = {group.key: group.recovered for group in step_groups}
    head_recovered = recovered_at.get(None, 0)
    rows = [
        FunnelStep(
            step=None,
            reached=total,
            reached_rate=_rate(total, total),
            recovered=head_recovered,
            recovery_rate=_rate(head_recovered, total),
        )
    ]
    for step in sorted(reached, key=lambda s: (order.get(s, (2,)), s)):
        recovered = recovered_at.get(step, 0)
        rows.append(
            FunnelStep(
                step=step,
                reached=reached[step],
                reached_rate=_rate(reached[step], total),
                recovered=recovered,
                recovery_rate=_rate(recovered, reached[step]),
            )
        )
    return rows


# -- helpers ------------------------------------------------------------------------------------


def _empty(key: str | None) -> GroupFigures:
    return GroupFigures(
        key=key, journeys=0, open=0, recovered=0, recovery_rate=None, currencies={},
        median_days_to_recovery=None, attempts_per_recovery=None, messages_sent=0, messages_per_recovery=None,
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _per(total: int, recovered: int) -> float | None:
    return round(total / recovered, 2) if recovered else None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
