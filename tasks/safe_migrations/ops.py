"""Helpers for revision files: ``from safe_migrations.ops import backfill``.

``backfill`` updates a table in key-ordered batches, each its own short transaction,
so no row lock is held for longer than one batch and the application's writes go on
between them. Batches are sized by time, as Spirit sizes its chunks: the first is small,
and each next one is scaled so that a batch takes about ``batch_seconds`` (50 ms by
default), never more than ``batch_size`` rows; a writer that meets a batch's row locks
waits one batch at most, whatever the table's size or its rows' width.

It is resumable: which rows are left is read from the data (the rows
whose new values are not yet in place, or those ``where`` selects), never from a
counter, so a rerun after an interruption carries on where the data says it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backfilled:
    table: str
    rows: int
    batches: int
    seconds: float


def backfill(
    table: str,
    set_: dict[str, str],
    where: str | None = None,
    batch_size: int = 10_000,
    pause: float = 0.0,
    schema: str | None = None,
    batch_seconds: float = 0.05,
) -> Backfilled:
    """``UPDATE table SET column = expression, ...`` in batches of at most ``batch_size``
    rows, each sized to take about ``batch_seconds``, in primary-key order, ``pause``
    seconds apart.

    ``set_`` maps each column to a SQL expression (``{"status": "'active'"}``,
    ``{"email_lower": "lower(email)"}``). ``where`` (SQL) selects the rows still to
    do; by default, the rows where any column differs from its expression. Progress
    goes to a terminal; the run's report gets the rows, batches and duration (through
    ``migration.safe_operations``, when it is on).
    """
    from alembic import op

    if not set_ or batch_size < 1 or batch_seconds <= 0:
        raise ValueError(
            "backfill needs set_ (column -> SQL expression), batch_size >= 1 and batch_seconds > 0"
        )
    context = op.get_context()
    if context.as_sql:  # offline (--dry-run, lint): nothing to walk; say what would run
        context.impl.static_output(
            f"-- backfill {table}: SET {', '.join(set_)} in batches of {batch_size} rows, "
            "each its own transaction"
        )
        return Backfilled(table, 0, 0, 0.0)
    statement, first = _statements(context, table, set_, where, schema)
    started = time.perf_counter()
    rows = batches = 0
    with context.autocommit_block():  # each batch commits on its own
        from sqlalchemy import text

        connection = context.connection
        assert connection is not None  # online: a connection of the run's
        low = connection.execute(text(first)).scalar()
        last: Any = None if low is None else _before(low)
        size = min(batch_size, FIRST_BATCH)
        update = text(statement).execution_options(safe_migrations_backfill=True)
        while last is not None:
            began = time.perf_counter()
            done = connection.execute(update, {"last": last, "size": size})
            keys = [row[0] for row in done]
            if not keys:
                break
            rows, batches, last = rows + len(keys), batches + 1, max(keys)
            size = next_size(size, time.perf_counter() - began, batch_seconds, batch_size)
            _progress(table, rows, batches)
            if pause:
                time.sleep(pause)
    result = Backfilled(table, rows, batches, round(time.perf_counter() - started, 3))
    if sys.stderr.isatty() and batches:
        sys.stderr.write("\n")
    _record(result)
    return result


FIRST_BATCH = 100


def next_size(size: int, took: float, target: float, most: int) -> int:
    """The next batch's rows: scaled by how far the last one was from the target time,
    at most doubled (a fast batch says little about the next) and never above ``most``."""
    scaled = int(size * target / max(took, 1e-4))
    return max(1, min(most, 2 * size, scaled))


def _statements(
    context: Any, table: str, set_: dict[str, str], where: str | None, schema: str | None
) -> tuple[str, str]:
    """The batch's UPDATE (by primary key, after ``:last``) and the query for the first
    key left; the table must have a one-column primary key."""
    from sqlalchemy import inspect

    preparer = context.dialect.identifier_preparer
    key = inspect(context.connection).get_pk_constraint(table, schema=schema)
    columns = key.get("constrained_columns") or []
    if len(columns) != 1:
        raise ValueError(
            f"backfill walks {table} by its primary key, which must be one column "
            f"(found {columns or 'none'}); update it with op.execute in batches of your own."
        )
    pk = preparer.quote(columns[0])
    name = preparer.quote(table)
    if schema:
        name = f"{preparer.quote_schema(schema)}.{name}"
    assignments = ", ".join(f"{preparer.quote(c)} = {e}" for c, e in set_.items())
    pending = where or " OR ".join(
        f"{preparer.quote(c)} IS DISTINCT FROM ({e})" for c, e in set_.items()
    )
    statement = (
        f"UPDATE {name} SET {assignments} WHERE {pk} IN (SELECT {pk} FROM {name} "
        f"WHERE ({pending}) AND {pk} > :last ORDER BY {pk} LIMIT :size) RETURNING {pk}"
    )
    first = f"SELECT min({pk}) FROM {name} WHERE ({pending})"
    return statement, first


def _before(low: Any) -> Any:
    """A key just below the first row left, so the first batch starts with it."""
    if isinstance(low, int):
        return low - 1
    if isinstance(low, str):
        return ""
    raise ValueError(f"backfill walks integer or text keys, not {type(low).__name__}")


def _progress(table: str, rows: int, batches: int) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\rbackfill {table}: {rows:,} rows in {batches} batches")
        sys.stderr.flush()


def _record(result: Backfilled) -> None:
    from safe_migrations.engines.pgsafe import CURRENT

    safety = CURRENT.get()
    if safety is not None and safety.mode != "collect":
        safety.note(
            "backfill",
            result.table,
            [f"{result.rows} rows in {result.batches} batches, {result.seconds:.1f} s"],
        )
