"""`dunning collections import`: the partner's report of what it collected, applied all or nothing.

Columns (docs/collections-format.md): placement_id, collected_amount (minor units, the total
to date), currency, date (YYYY-MM-DD), status (collected|partial|uncollectible|disputed).
Every row is checked first; one bad row refuses the whole file, with every problem listed.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from dunning.store import Store
from dunning.store.records import COLLECTION_STATUSES, PlacementRecord, ReconciliationUpdate

COLUMNS: tuple[str, ...] = ("placement_id", "collected_amount", "currency", "date", "status")
HEADER = ",".join(COLUMNS)


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.problem}; fix: {self.fix}"


class ReconciliationError(ValueError):
    def __init__(self, errors: list[RowError]) -> None:
        self.errors = sorted(errors, key=lambda e: (e.line, COLUMNS.index(e.column) if e.column in COLUMNS else -1))
        super().__init__(f"{len(self.errors)} problem(s); nothing was applied:\n" + "\n".join(map(str, self.errors)))


@dataclass(frozen=True)
class ParsedRow:
    line: int
    update: ReconciliationUpdate


def parse_reconciliation(text: str, *, today: date) -> list[ParsedRow]:
    """Check the file's shape and every value; raises ReconciliationError listing all problems."""
    text = text.removeprefix("\ufeff")  # spreadsheets save a BOM
    reader = csv.reader(io.StringIO(text, newline=""))
    errors: list[RowError] = []
    header = next(reader, None)
    if header is None:
        raise ReconciliationError([RowError(1, "(header)", "the file is empty", f"start with the header row {HEADER}")])
    names = [name.strip() for name in header]
    for name in COLUMNS:
        if name not in names:
            errors.append(RowError(1, name, "missing column", f"the header row must be {HEADER}"))
    for name in names:
        if name not in COLUMNS:
            errors.append(RowError(1, name or "(blank)", "unknown column", f"remove it; the columns are {HEADER}"))
    if len(set(names)) != len(names):
        errors.append(RowError(1, "(header)", "a column appears twice", f"the header row must be {HEADER}"))
    if errors:
        raise ReconciliationError(errors)

    rows: list[ParsedRow] = []
    seen: dict[str, int] = {}
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(reader.line_num, "(row)", f"not valid CSV ({exc})", "close the quoted field"))
            break
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        if len(cells) != len(names):
            errors.append(
                RowError(line, "(row)", f"{len(cells)} fields, the header has {len(names)}", f"give every row the columns {HEADER}")
            )
            continue
        values = {name: cell.strip() for name, cell in zip(names, cells, strict=True)}
        row_errors = _check_row(line, values, today)
        placement_id = values["placement_id"]
        if placement_id and placement_id in seen:
            row_errors.append(
                RowError(line, "placement_id", f"{placement_id} is also on line {seen[placement_id]}", "keep one row per placement (its latest outcome)")
            )
        seen.setdefault(placement_id, line)
        if row_errors:
            errors.extend(row_errors)
            continue
        rows.append(
            ParsedRow(
                line,
                ReconciliationUpdate(
                    placement_id=placement_id,
                    collected_amount=int(values["collected_amount"]),
                    currency=values["currency"].lower(),
                    collected_on=date.fromisoformat(values["date"]),
                    status=values["status"].lower(),
                ),
            )
        )
    if errors:
        raise ReconciliationError(errors)
    if not rows:
        raise ReconciliationError([RowError(2, "(row)", "the file has no rows", "add one row per placement below the header")])
    return rows


def _check_row(line: int, values: dict[str, str], today: date) -> list[RowError]:
    errors = []
    if not values["placement_id"]:
        errors.append(RowError(line, "placement_id", "empty", "copy the placement_id from the placements export"))
    amount = values["collected_amount"]
    if not re.fullmatch(r"\d+", amount):
        errors.append(
            RowError(line, "collected_amount", f"{amount!r} is not a whole number of minor units",
                     "write the total collected so far in cents, digits only, e.g. 1250 for 12.50")
        )
    if not re.fullmatch(r"[A-Za-z]{3}", values["currency"]):
        errors.append(RowError(line, "currency", f"{values['currency']!r} is not a currency code", "use the placement's ISO 4217 code, e.g. usd"))
    try:
        day = date.fromisoformat(values["date"]) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", values["date"]) else None
    except ValueError:
        day = None
    if day is None:
        errors.append(RowError(line, "date", f"{values['date']!r} is not a date", "write it as YYYY-MM-DD, e.g. 2026-11-23"))
    elif day > today + timedelta(days=1):  # one day of slack for partners east of us
        errors.append(RowError(line, "date", f"{day} is in the future", "use the date the partner collected or closed it"))
    if values["status"].lower() not in COLLECTION_STATUSES:
        errors.append(
            RowError(line, "status", f"{values['status']!r} is not a known status", f"use one of {'|'.join(COLLECTION_STATUSES)}")
        )
    return errors


def check_against_placements(rows: list[ParsedRow], placements: dict[str, PlacementRecord]) -> list[RowError]:
    errors = []
    for row in rows:
        item, line = row.update, row.line
        placement = placements.get(item.placement_id)
        if placement is None:
            errors.append(RowError(line, "placement_id", f"no placement {item.placement_id}", "copy the id from a placements export"))
            continue
        if item.currency != placement.currency:
            errors.append(
                RowError(line, "currency", f"{item.currency} does not match the placement's {placement.currency}",
                         f"report it in {placement.currency}, the currency it was placed in")
            )
            continue
        owed = placement.amount
        if item.collected_amount > owed:
            errors.append(
                RowError(line, "collected_amount", f"{item.collected_amount} exceeds the placed amount {owed}",
                         "report only what was collected of this debt, in minor units")
            )
        elif item.status == "collected" and item.collected_amount != owed:
            errors.append(
                RowError(line, "status", f"collected, but {item.collected_amount} of {owed} was collected",
                         f"use partial, or set collected_amount to {owed}")
            )
        elif item.status == "partial" and not 0 < item.collected_amount < owed:
            errors.append(
                RowError(line, "status", f"partial needs 0 < collected_amount < {owed}, got {item.collected_amount}",
                         "use collected for the full amount, or uncollectible when nothing was collected")
            )
    return errors


def apply_reconciliation(store: Store, text: str, *, at: datetime) -> int:
    """Validate everything, then apply in one transaction; the number of placements updated."""
    rows = parse_reconciliation(text, today=at.date())

    def check(placements: dict[str, PlacementRecord]) -> None:
        errors = check_against_placements(rows, placements)
        if errors:
            raise ReconciliationError(errors)

    return store.apply_reconciliation([row.update for row in rows], at=at, check=check)


def import_file(store: Store, path: Path, *, at: datetime) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReconciliationError(
            [RowError(1, "(file)", f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save the file as CSV UTF-8")]
        ) from None
    return apply_reconciliation(store, text, at=at)
