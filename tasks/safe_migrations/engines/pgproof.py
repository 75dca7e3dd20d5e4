"""A PostgreSQL backup proven by restoring it (``backup.prove: restore``).

The source's tables are fingerprinted (row count and an order-free sum of each row's
hash, CHECKSUMS) in a REPEATABLE READ transaction whose snapshot pg_dump then dumps
(``--snapshot``), so the fingerprints describe exactly the rows the archive holds, on a
live database too. The archive is restored into a scratch database, fingerprinted the
same way there and compared table by table; the restore's duration is the recovery
time. The fingerprints go into the manifest, so a backup can be proven again later
against what its source held, whoever can rewrite the file and its checksum.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from safe_migrations.core.config import Environment
from safe_migrations.engines.pgsafe import qualified

T = TypeVar("T")

# The tool's own schema (rehearsal proofs) is no part of what a backup must bring back.
USER_TABLES = """
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'safe_migrations')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
ORDER BY 1, 2
"""
TABLES = "SELECT n.nspname, c.relname" + USER_TABLES
# How each row is checksummed; the name goes into the manifest with the fingerprints, so
# a backup proven again later is checked the way its source was. "md5" (the first
# proofs): 60 bits of each row's md5; "hash64": PostgreSQL's own 64-bit text hash,
# 2.7 times faster (0.46 against 1.26 s over 2,000,000 pgbench rows), the sum exact.
# "record64" (PostgreSQL 14+): the row's own 64-bit hash, no text made of it (1.39-1.49
# against 2.17-2.51 s over 7,000,000 pgbench rows), for a table whose every column's hash
# tells values apart exactly as their text does (EXACT_TYPES); any other table: hash64.
CHECKSUMS = {
    "md5": "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 15))::bit(60)::bigint), 0)"
    "::text FROM {table} AS t",
    "hash64": "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text "
    "FROM {table} AS t",
    "record64": "SELECT count(*), coalesce(sum(hash_record_extended(t, 0)), 0)::text "
    "FROM {table} AS t",
}
# The types whose hash differs wherever their text does. Not numeric (1.0 and 1.00 hash
# alike), floats (0 and -0), interval (1 day and 24 hours), jsonb (its numbers), enums
# (their hash is the label's oid, another in the restored copy), domains, arrays, ...;
# text types only under a deterministic collation, char(n) only with its length (its
# hash ignores trailing blanks, which char(n) pads anyway).
EXACT_TYPES = (
    "int2 int4 int8 bool date time timestamp timestamptz uuid bytea oid text varchar bpchar"
)
EXACT_TABLES = f"""
SELECT n.nspname, c.relname, coalesce((
    SELECT bool_and(a.atttypid = ANY ('{{{",".join(EXACT_TYPES.split())}}}'::regtype[])
                    AND (a.atttypid <> 'bpchar'::regtype OR a.atttypmod > 0)
                    AND (a.attcollation = 0 OR co.collisdeterministic))
    FROM pg_attribute a LEFT JOIN pg_collation co ON co.oid = a.attcollation
    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), false)
{USER_TABLES}"""


def checksum_for(connection: Any) -> str:
    """How new fingerprints on this server checksum rows: record64 where it has
    hash_record_extended (PostgreSQL 14), hash64 before."""
    return "record64" if connection.dialect.server_version_info >= (14,) else "hash64"


@contextmanager
def exported_snapshot(env: Environment) -> Iterator[tuple[str, Any]]:
    """A read-only REPEATABLE READ transaction and its exported snapshot, open while the
    caller dumps and fingerprints it."""
    from sqlalchemy import text

    from safe_migrations.core.database import connect

    with connect(env, role="backup") as connection:
        connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
        snapshot = str(connection.execute(text("SELECT pg_export_snapshot()")).scalar_one())
        try:
            yield snapshot, connection
        finally:
            connection.rollback()


def fingerprints(
    connection: Any, checksum: str, stop: threading.Event | None = None
) -> dict[str, list[Any]]:
    """Each table's [rows, checksum] as ``connection``'s transaction sees it (until
    ``stop`` is set: then Cancelled)."""
    from sqlalchemy import text

    found: dict[str, list[Any]] = {}
    tables = EXACT_TABLES if checksum == "record64" else TABLES
    for schema, table, *exact in connection.execute(text(tables)).all():
        if stop is not None and stop.is_set():
            raise Cancelled
        query = CHECKSUMS["hash64" if exact == [False] else checksum]
        name = qualified(schema, table)
        rows, checksum_of = connection.execute(text(query.format(table=name))).one()
        found[f"{schema}.{table}"] = [int(rows), str(checksum_of)]
    return found


class Cancelled(Exception):
    """The fingerprints were stopped: the dump beside them failed."""


def fingerprints_beside(
    connection: Any, checksum: str, work: Callable[[], T]
) -> tuple[dict[str, list[Any]], T]:
    """The fingerprints made on a thread while ``work`` (pg_dump of the connection's
    exported snapshot) runs: both wait on the server, and one after the other a
    proven backup paid for both (2.0 s of fingerprints before a 2.5 s dump of 1 GB).
    When the work fails, the fingerprints stop: their running query is cancelled on
    the server (again until the thread is back: a query may start after a cancel).
    When they failed first, theirs is the error: it ended the exported snapshot."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import wait as wait_for

    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="fingerprints") as pool:
        found = pool.submit(fingerprints, connection, checksum, stop)
        try:
            done = work()
        except BaseException as exc:
            if found.done() and found.exception() is not None:
                # failed first, and aborted the snapshot's transaction under pg_dump
                raise found.exception() from exc  # type: ignore[misc]
            stop.set()
            while not found.done():
                connection.connection.dbapi_connection.cancel()
                wait_for([found], timeout=0.1)
            raise
    return found.result(), done


def restored_fingerprints(
    env: Environment, scratch: Environment, path: Any, checksum: str
) -> tuple[Any, float]:
    """Restore ``path`` into ``scratch``; its fingerprints and the restore's seconds."""
    from safe_migrations.core.database import connect
    from safe_migrations.engines.pgrestore import restore_postgres

    started = time.perf_counter()
    restore_postgres(scratch, path)
    seconds = time.perf_counter() - started
    with connect(scratch, role="check") as connection:
        return fingerprints(connection, checksum), seconds
