"""PostgreSQL's zero-downtime operations: Alembic's own operations run in their
non-blocking form while a run's ``migration.safe_operations`` says ``rewrite``.

The rewrite goes through Alembic's extension point, the operation implementations
(``Operations.implementation_for``), never through the SQL text: each wrapped
implementation hands the operation to Alembic's own unless a PostgreSQL run has
switched the rewrite on (a context variable, so nothing else in the process sees it).

- ``create_index`` -> ``CREATE INDEX CONCURRENTLY``, outside the revision's
  transaction, after every older snapshot has ended (waited for within the lock
  budget, named if it stays); a build that fails leaves an INVALID index, which is
  dropped (and the build retried when the failure was a lock or a cancellation).
- ``drop_index`` -> ``DROP INDEX CONCURRENTLY``.
- a foreign key or check constraint -> ``ADD CONSTRAINT ... NOT VALID``, then
  ``VALIDATE CONSTRAINT`` in a transaction of its own (SHARE UPDATE EXCLUSIVE only).
- ``alter_column(nullable=False)`` -> a ``CHECK (col IS NOT NULL) NOT VALID``,
  validated, then ``SET NOT NULL`` (no scan given the valid check), then the check
  dropped.
- a unique constraint or primary key -> ``CREATE UNIQUE INDEX CONCURRENTLY``, then
  ``ADD CONSTRAINT ... USING INDEX`` (the same name, so the schema is the bare one's).
- ``add_column`` with ``index=True``, ``unique=True`` or an inline ``ForeignKey`` ->
  the column alone, then each of those through its own rewrite.

Every form Alembic emits takes the same path: inside ``op.batch_alter_table`` (which
PostgreSQL runs as plain ALTERs) each operation runs when it is called, as the plain
one would; a name SQLAlchemy cut to 63 characters, or one PostgreSQL chooses for an
unnamed constraint, is the name validated. A validation the rows break drops what its
part added (a NOT VALID constraint would reject new rows), and the ``sm_nn_*`` check a
kill left is dropped before the next run's first revision.

Every part is idempotent (the catalog is read before each), so rerunning a revision
that stopped after a committed part completes it. Short statements keep the run's
lock timeout and are retried within ``migration.lock_budget``; the long ones (the
build, the validation) block no reads or writes, and run without a lock or statement
timeout. Tables and columns the same transaction created are left to Alembic: nobody
else can see them yet.

Kept long: the five rewrites share the catalog reads, the part runner and the
clean-up of an interrupted build; each rewrite is a short function of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import ToolError

if TYPE_CHECKING:
    from alembic.operations import Operations

    from safe_migrations.core.config import Environment

MODES = ("rewrite", "check", "off")
LOCK_NOT_AVAILABLE = "55P03"
TRANSIENT = {LOCK_NOT_AVAILABLE, "40P01", "57014"}  # lock timeout, deadlock, cancelled
POLL_SECONDS = 0.2


@dataclass
class Safety:
    """One run's rewrite: its mode, the environment's limits, and what it rewrote."""

    env: Environment
    mode: str  # rewrite | check | collect (offline: the operations listed, not changed)
    rewritten: list[dict[str, Any]] = field(default_factory=list)
    collected: list[tuple[str, Any]] = field(default_factory=list)
    revision: str = ""  # collect: the revision being rendered
    running: Callable[[], Any] | None = None  # a run: the revision running now (upgrade.py)
    project: Any = None  # a run: its Alembic project, for the lint baseline
    created: set[int] = field(default_factory=set)  # the oids of tables this run created

    def note(self, operation: str, target: str, parts: list[str], done: str = "ran") -> None:
        self.rewritten.append(
            {"operation": operation, "target": target, "parts": parts, "outcome": done}
        )

    def take(self) -> list[dict[str, Any]]:
        """What was rewritten since the last call (the revision that just applied)."""
        found, self.rewritten = self.rewritten, []
        return found


CURRENT: ContextVar[Safety | None] = ContextVar("safe_operations", default=None)
_INSTALLED: list[bool] = []


@contextlib.contextmanager
def safe_operations(env: Environment, mode: str) -> Iterator[Safety | None]:
    """While the block runs, PostgreSQL operations take their non-blocking form
    (``rewrite``) or are listed without being changed (``check``); ``off``: Alembic's."""
    if mode == "off":
        yield None
        return
    install()
    safety = Safety(env, mode)
    token = CURRENT.set(safety)
    try:
        yield safety
    finally:
        CURRENT.reset(token)


def install() -> None:
    """Wrap every operation implementation Alembic has, once per process; each wrapper
    hands the operation to the one it replaced unless a PostgreSQL run has the rewrite
    on. The operations with no rewrite are wrapped too: they are listed for the
    refusals (pgrefusals.py), and inside a batch they run when they are called, in order
    with the rewritten ones (see ``_unbatched``)."""
    if _INSTALLED:
        return
    from alembic.operations import Operations
    from alembic.operations import ops as alembic_ops

    rewrites: dict[type, Callable[..., Any]] = {
        alembic_ops.CreateIndexOp: _create_index,
        alembic_ops.DropIndexOp: _drop_index,
        alembic_ops.AddConstraintOp: _add_constraint,
        alembic_ops.AlterColumnOp: _alter_column,
        alembic_ops.AddColumnOp: _add_column,
        alembic_ops.CreateTableOp: _create_table,
    }
    registry = Operations._to_impl._registry
    for (op_class, qualifier), original in list(registry.items()):
        if qualifier != "default" or not isinstance(op_class, type):
            continue
        rewrite = rewrites.get(op_class, _as_written)
        Operations.implementation_for(op_class, replace=True)(_wrapped(original, rewrite))
    _INSTALLED.append(True)


def _wrapped(original: Callable[..., Any], rewrite: Callable[..., Any]) -> Callable[..., Any]:
    def implementation(operations: Operations, operation: Any) -> Any:
        safety = CURRENT.get()
        if safety is not None and safety.mode == "collect":  # listed for any engine's refusals
            safety.collected.append((safety.revision, operation))
            return original(operations, operation)
        if safety is None or operations.migration_context.dialect.name != "postgresql":
            return original(operations, operation)
        plain = _unbatched(operations)
        if plain is None:  # a batch that recreates the table: entirely as written
            return original(operations, operation)
        return rewrite(safety, plain, operation, lambda: original(plain, operation))

    return implementation


def _unbatched(operations: Operations) -> Operations | None:
    """Inside ``op.batch_alter_table`` PostgreSQL runs each operation as a plain ALTER
    (unless ``recreate='always'``): the same operation outside the batch, run now rather
    than queued to the batch's end, so rewritten and written parts keep their order and
    none of them sees a catalog from before the others. None: the batch recreates the
    table (move and copy), which is left whole to Alembic."""
    from alembic.operations import Operations
    from alembic.operations.batch import BatchOperationsImpl

    batch = operations.impl
    if not isinstance(batch, BatchOperationsImpl):
        return operations
    if batch._should_recreate():
        return None
    return Operations(operations.migration_context)


# --- the rewrites -----------------------------------------------------------------------


def _as_written(safety: Safety, operations: Operations, operation: Any, bare: Any) -> None:
    return bare()


def _create_table(safety: Safety, operations: Operations, operation: Any, bare: Any) -> Any:
    """As written; the table is remembered as the run's own (its data statements in
    later revisions of the run are not judged: nobody else uses it yet)."""
    made = bare()
    context: Any = operations.migration_context
    if not context.as_sql:
        oid = context.connection.exec_driver_sql(
            "SELECT to_regclass(%(t)s)::oid",
            {"t": qualified(operation.schema, operation.table_name)},
        ).scalar()
        if oid is not None:
            safety.created.add(int(oid))
    return made


def _create_index(safety: Safety, operations: Operations, operation: Any, bare: Any) -> None:
    _index(safety, operations, operation.to_index(operations.migration_context), bare)


def _index(safety: Safety, operations: Operations, index: Any, bare: Any) -> None:
    context = operations.migration_context
    table = qualified(index.table.schema, index.table.name)
    name = _db_name(context, index)
    if name is None or _is_new(context, table):
        return bare()
    if safety.mode == "check":
        safety.note("create_index", name, ["CREATE INDEX CONCURRENTLY"], "would rewrite")
        return bare()
    index.dialect_options["postgresql"]["concurrently"] = True
    parts = [f"CREATE {'UNIQUE ' if index.unique else ''}INDEX CONCURRENTLY {name}"]
    where = qualified(index.table.schema, name)
    _build_index(safety, operations, where, table, lambda: operations.impl.create_index(index))
    safety.note("create_index", name, parts)


def _drop_index(safety: Safety, operations: Operations, operation: Any, bare: Any) -> None:
    context = operations.migration_context
    index = operation.to_index(context)
    shown = _db_name(context, index) or str(index.name)
    name = qualified(operation.schema, shown)
    if _is_new(context, name):
        return bare()
    if safety.mode == "check":
        safety.note("drop_index", shown, ["DROP INDEX CONCURRENTLY"], "would rewrite")
        return bare()
    index.dialect_options["postgresql"]["concurrently"] = True
    with _outside_transaction(context):
        if context.as_sql or _relation_exists(context, name):
            _long(safety, context, lambda: operations.impl.drop_index(index, if_exists=True))
    safety.note("drop_index", shown, [f"DROP INDEX CONCURRENTLY {shown}"])


def _add_constraint(safety: Safety, operations: Operations, operation: Any, bare: Any) -> None:
    constraint = operation.to_constraint(operations.migration_context)
    _constraint(safety, operations, constraint, bare)


def _constraint(safety: Safety, operations: Operations, constraint: Any, bare: Any) -> None:
    from sqlalchemy.schema import (
        CheckConstraint,
        ForeignKeyConstraint,
        PrimaryKeyConstraint,
        UniqueConstraint,
    )

    context = operations.migration_context
    table = qualified(constraint.table.schema, constraint.table.name)
    deferred = getattr(constraint, "deferrable", None) or getattr(constraint, "initially", None)
    if deferred or _is_new(context, table):
        return bare()
    name = _db_name(context, constraint) or "(named by PostgreSQL)"
    if isinstance(constraint, ForeignKeyConstraint | CheckConstraint):
        if safety.mode == "check":
            safety.note("add_constraint", name, ["NOT VALID", "VALIDATE"], "would rewrite")
            return bare()
        return _validated_later(safety, operations, constraint, table)
    if isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint):
        if safety.mode == "check":
            safety.note(
                "add_constraint",
                name,
                ["UNIQUE INDEX CONCURRENTLY", "USING INDEX"],
                "would rewrite",
            )
            return bare()
        return _from_index(safety, operations, constraint, table)
    return bare()


def _add_column(safety: Safety, operations: Operations, operation: Any, bare: Any) -> None:
    """``add_column`` with ``index=True``, ``unique=True`` or an inline ``ForeignKey``:
    the column alone under ADD COLUMN's short lock, then each index and constraint it
    carries through its own rewrite, as ``create_index`` and ``add_constraint`` would
    run (Alembic's own implementation adds them under the same lock, building and
    validating while the table is closed)."""
    from sqlalchemy.schema import PrimaryKeyConstraint

    context = operations.migration_context
    column = operation.column
    extras = column.foreign_keys or column.index or column.unique
    if not extras or _is_new(context, qualified(operation.schema, operation.table_name)):
        return bare()
    if column.table is not None:
        column = column._copy()
    table = operations.schema_obj.table(operation.table_name, column, schema=operation.schema)
    operations.impl.add_column(
        operation.table_name,
        column,
        schema=operation.schema,
        if_not_exists=operation.if_not_exists,
        inline_primary_key=operation.inline_primary_key,
        **operation.kw,
    )
    for constraint in table.constraints:
        if not isinstance(constraint, PrimaryKeyConstraint):
            _constraint(
                safety,
                operations,
                constraint,
                lambda c=constraint: operations.impl.add_constraint(c),
            )
    for index in table.indexes:
        _index(safety, operations, index, lambda i=index: operations.impl.create_index(i))
    if column.comment is not None and operations.impl.dialect.supports_comments:
        operations.impl.create_column_comment(column)


def _alter_column(safety: Safety, operations: Operations, operation: Any, bare: Any) -> None:
    context = operations.migration_context
    table = qualified(operation.schema, operation.table_name)
    if operation.modify_nullable is not False or _is_new(context, table):
        return bare()
    if safety.mode == "check":
        safety.note(
            "alter_column",
            f"{operation.table_name}.{operation.column_name}",
            ["CHECK NOT VALID", "VALIDATE", "SET NOT NULL"],
            "would rewrite",
        )
        return bare()
    changes_more = (
        operation.modify_type is not None
        or operation.modify_server_default is not False
        or operation.modify_name is not None
        or operation.modify_comment is not False
    )
    if changes_more:  # the other changes first, as Alembic would, then the safe NOT NULL
        operation.modify_nullable = None
        try:
            bare()
        finally:
            operation.modify_nullable = False
    column = operation.modify_name or operation.column_name
    _set_not_null(safety, operations, operation.table_name, column, operation.schema)


# --- the parts --------------------------------------------------------------------------


def _validated_later(safety: Safety, operations: Operations, constraint: Any, table: str) -> None:
    """``ADD CONSTRAINT ... NOT VALID`` (a short lock), then ``VALIDATE CONSTRAINT`` in a
    transaction of its own, which scans without blocking writes. A validation that fails
    (rows that break it) drops the constraint again: left NOT VALID it would reject the
    application's new rows, where bare Alembic would have left nothing."""
    context = operations.migration_context
    name = _db_name(context, constraint)
    constraint.dialect_options["postgresql"]["not_valid"] = True
    with _outside_transaction(context):
        if context.as_sql:
            operations.impl.add_constraint(constraint)
            _execute(context, _validate_sql(context, table, name or "<named by PostgreSQL>"))
            safety.note("add_constraint", str(name), ["NOT VALID", "VALIDATE"])
            return
        found = _constraint_state(context, table, name) if name else None
        if name is None or found is None:
            before = _constraint_names(context, table)
            _short(safety, context, lambda: operations.impl.add_constraint(constraint))
            name = name or _added_name(context, table, before)
        if found is not True:
            _validate_or_drop(safety, context, table, name)
    safety.note("add_constraint", name, [f"ADD CONSTRAINT {name} NOT VALID", f"VALIDATE {name}"])


def _validate_or_drop(safety: Safety, context: Any, table: str, name: str) -> None:
    try:
        _long_sql(safety, context, _validate_sql(context, table, name))
    except Exception:
        with contextlib.suppress(Exception):
            _drop_constraint(safety, context, table, name)
        raise


def _drop_constraint(safety: Safety, context: Any, table: str, name: str) -> None:
    quoted_name = context.dialect.identifier_preparer.quote(name)
    _short_sql(safety, context, f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {quoted_name}")


def _set_not_null(
    safety: Safety, operations: Operations, table_name: str, column: str, schema: str | None
) -> None:
    """NOT NULL through a validated check: PostgreSQL 12+ then sets it without a scan.
    The check is dropped in every outcome: after SET NOT NULL, after a failed validation
    (NULLs left), and by a rerun when a kill left it."""
    from sqlalchemy import text
    from sqlalchemy.schema import CheckConstraint, Column, MetaData, Table

    context = operations.migration_context
    table = qualified(schema, table_name)
    check = _check_name(table_name, column)
    if not context.as_sql and _is_not_null(context, table, column):
        if _constraint_state(context, table, check) is not None:
            with _outside_transaction(context):
                _drop_constraint(safety, context, table, check)  # a kill's leftover
        return
    with _outside_transaction(context):
        preparer = context.dialect.identifier_preparer
        stub = Table(table_name, MetaData(), Column(column), schema=schema)
        constraint = CheckConstraint(
            text(f"{preparer.quote(column)} IS NOT NULL"), name=check, postgresql_not_valid=True
        )
        stub.append_constraint(constraint)
        found = None if context.as_sql else _constraint_state(context, table, check)
        if found is None:
            _short(safety, context, lambda: operations.impl.add_constraint(constraint))
        if found is not True:
            _validate_or_drop(safety, context, table, check)
        try:
            set_not_null = f"ALTER TABLE {table} ALTER COLUMN {preparer.quote(column)} SET NOT NULL"
            _short_sql(safety, context, set_not_null)
        finally:
            _drop_constraint(safety, context, table, check)
    safety.note(
        "alter_column",
        f"{table_name}.{column}",
        [f"CHECK ({column} IS NOT NULL) NOT VALID", "VALIDATE", "SET NOT NULL", "DROP CHECK"],
    )


def _from_index(safety: Safety, operations: Operations, constraint: Any, table: str) -> None:
    """A unique constraint or primary key from an index built concurrently, same name
    (an unnamed one gets the name PostgreSQL would have chosen). When the constraint
    cannot be added (NULLs in a primary key), the index built for it is dropped."""
    from sqlalchemy.schema import PrimaryKeyConstraint

    context = operations.migration_context
    columns = [c.name for c in constraint.columns]
    primary = isinstance(constraint, PrimaryKeyConstraint)
    table_name, schema = constraint.table.name, constraint.table.schema
    name = _db_name(context, constraint)
    if name is None and not context.as_sql:
        label = "pkey" if primary else "key"
        name = chosen_name(context, schema, table_name, None if primary else columns, label)
    name = name or f"{table_name}_{'_'.join(columns)}_key"
    if not context.as_sql and _constraint_state(context, table, name) is not None:
        return
    if primary:  # ADD PRIMARY KEY would set NOT NULL with a scan under ACCESS EXCLUSIVE
        for column in columns:
            _set_not_null(safety, operations, table_name, column, schema)
    index = operations.schema_obj.index(name, table_name, columns, schema=schema, unique=True)
    index.dialect_options["postgresql"]["concurrently"] = True
    index_name = qualified(schema, name)
    _build_index(safety, operations, index_name, table, lambda: operations.impl.create_index(index))
    preparer = context.dialect.identifier_preparer
    kind = "PRIMARY KEY" if primary else "UNIQUE"
    with _outside_transaction(context):
        try:
            quoted = preparer.quote(name)
            using = f"ALTER TABLE {table} ADD CONSTRAINT {quoted} {kind} USING INDEX {quoted}"
            _short_sql(safety, context, using)
        except Exception:
            if not context.as_sql:
                with contextlib.suppress(Exception):
                    _drop_invalid(safety, context, index_name)
            raise
    safety.note(
        "add_constraint", name, [f"CREATE UNIQUE INDEX CONCURRENTLY {name}", f"{kind} USING INDEX"]
    )


def _build_index(
    safety: Safety, operations: Operations, name: str, table: str, create: Callable[[], Any]
) -> None:
    """The concurrent build, after older snapshots end; an INVALID index a failed or
    interrupted build left (now or in an earlier run) is dropped before a new build."""
    context = operations.migration_context
    if context.as_sql:
        with _outside_transaction(context):
            create()
        return
    state = _index_state(context, name)
    if state is True:
        return  # built by an earlier run that stopped after this part
    budget = safety.env.settings.migration.lock_budget
    deadline = time.monotonic() + budget
    with _outside_transaction(context):
        if state is False:
            _drop_invalid(safety, context, name)
        while True:
            _wait_for_old_snapshots(safety, context, table, deadline)
            try:
                _long(safety, context, create)
                return
            except Exception as exc:
                _drop_invalid_aside(safety, name)
                if _sqlstate(exc) not in TRANSIENT or time.monotonic() >= deadline:
                    raise
                time.sleep(_jitter(safety))


def _wait_for_old_snapshots(safety: Safety, context: Any, table: str, deadline: float) -> None:
    """A concurrent build waits for every transaction older than it: wait for those open
    now from the side (they block nothing of ours yet), and name them if they stay."""
    sql = (
        "SELECT pid, usename, application_name, coalesce(state, 'hidden'), "
        "extract(epoch FROM now() - xact_start), xact_start FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend' AND backend_xmin IS NOT NULL"
    )

    def open_now() -> dict[tuple[Any, Any], Any]:  # a transaction: its backend and start
        rows = context.connection.exec_driver_sql(sql).fetchall()
        return {(row[0], row[5]): row[:5] for row in rows}

    first = open_now()
    while first:
        now = open_now()
        first = {key: now[key] for key in first if key in now}
        if not first:
            return
        if time.monotonic() >= deadline:
            described = "; ".join(
                f"pid {pid} ({user}, {app or 'no application name'}, {state}, "
                f"transaction {float(age or 0):.1f}s)"
                for pid, user, app, state, age in list(first.values())[:5]
            )
            raise ToolError(
                f"CREATE INDEX CONCURRENTLY on {table} waits for every transaction older "
                f"than it, and these stayed open past migration.lock_budget="
                f"{safety.env.settings.migration.lock_budget:g}s: {described}; end them (or "
                "raise the budget) and run again. Nothing of this index was built."
            )
        time.sleep(POLL_SECONDS)


def _drop_invalid(safety: Safety, context: Any, name: str) -> None:
    _long_sql(safety, context, f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def _drop_invalid_aside(safety: Safety, name: str) -> None:
    """After a failed build, on a connection of its own (the run's may be gone): drop the
    INVALID index it left, so none stays behind; a next run would drop it anyway."""
    from safe_migrations.core.database import connect

    with contextlib.suppress(Exception), connect(safety.env, "migrate", autocommit=True) as c:
        valid = c.exec_driver_sql(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(n)s)", {"n": name}
        ).scalar()
        if valid is False:
            c.exec_driver_sql("SET lock_timeout = 0")
            c.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # quoted


def drop_leftover_checks(connection: Any) -> None:
    """The ``sm_nn_*`` checks a killed run left (between its SET NOT NULL and the check's
    drop, or before its validation): dropped before any revision runs, upward or down,
    each under the session's lock timeout; one that cannot be dropped now stays for the
    validate step to name."""
    from sqlalchemy import text

    found = connection.execute(
        text(
            "SELECT conrelid::regclass::text, quote_ident(conname) FROM pg_constraint "
            "WHERE contype = 'c' AND conname LIKE 'sm\\_nn\\_%'"
        )
    ).fetchall()
    for table, name in found:
        try:
            connection.exec_driver_sql(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
            connection.commit()
        except Exception:  # noqa: BLE001 - left for validation to report, never fatal here
            connection.rollback()
    connection.rollback()


# --- running a part ---------------------------------------------------------------------


@contextlib.contextmanager
def _outside_transaction(context: Any) -> Iterator[None]:
    """Each part in a transaction of its own: the revision's transaction is committed
    (Alembic's autocommit block), unless a block is already open."""
    options = {} if context.as_sql else context.connection.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        yield
        return
    with context.autocommit_block():
        yield


def _short(safety: Safety, context: Any, run: Callable[[], Any]) -> None:
    """A statement that takes a strong lock for an instant: the run's lock timeout, and
    retried (it is a transaction of its own) within ``migration.lock_budget``."""
    if context.as_sql:
        run()
        return
    settings = safety.env.settings.migration
    deadline = time.monotonic() + settings.lock_budget
    connection = context.connection
    connection.exec_driver_sql(f"SET lock_timeout = {int(settings.lock_timeout * 1000)}")
    try:
        while True:
            try:
                run()
                return
            except Exception as exc:
                if _sqlstate(exc) != LOCK_NOT_AVAILABLE or time.monotonic() >= deadline:
                    raise
                time.sleep(_jitter(safety))
    finally:
        with contextlib.suppress(Exception):
            connection.exec_driver_sql("SET lock_timeout = 0")


def _long(safety: Safety, context: Any, run: Callable[[], Any]) -> None:
    """A statement that scans or builds without blocking reads or writes: no lock or
    statement timeout (a timeout would only throw the work away)."""
    if context.as_sql:
        run()
        return
    connection = context.connection
    connection.exec_driver_sql("SET lock_timeout = 0")
    connection.exec_driver_sql("SET statement_timeout = 0")
    try:
        run()
    finally:
        limit = safety.env.settings.migration.statement_timeout
        with contextlib.suppress(Exception):
            connection.exec_driver_sql(f"SET statement_timeout = {int((limit or 0) * 1000)}")


def _short_sql(safety: Safety, context: Any, sql: str) -> None:
    _short(safety, context, lambda: _execute(context, sql))


def _long_sql(safety: Safety, context: Any, sql: str) -> None:
    _long(safety, context, lambda: _execute(context, sql))


def _execute(context: Any, sql: str) -> None:
    from sqlalchemy import text

    context.impl._exec(text(sql))


def _jitter(safety: Safety) -> float:
    return safety.env.settings.migration.lock_timeout * (0.5 + random.random())  # noqa: S311


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "pgcode", None)


# --- the catalog ------------------------------------------------------------------------


def _is_new(context: Any, relation: str) -> bool:
    """Made by the transaction running now (or not there yet): no one else sees it, so
    Alembic's plain statement blocks nobody. Read from the table's row type, which only
    its creation writes (pg_class's own row is rewritten by every ALTER, so an
    ``add_column`` earlier in the same revision would make any table look new); an index
    has no row type and is judged by its pg_class row. Offline, nothing can be read:
    not new."""
    if context.as_sql:
        return False
    found = context.connection.exec_driver_sql(
        "SELECT coalesce(t.xmin, c.xmin)::text = (pg_current_xact_id_if_assigned()::xid)::text "
        "FROM pg_class c LEFT JOIN pg_type t ON t.oid = c.reltype "
        "WHERE c.oid = to_regclass(%(name)s)",
        {"name": relation},
    ).fetchall()
    return not found or bool(found[0][0])


def _db_name(context: Any, item: Any) -> str | None:
    """The name the database gets for an index or constraint: a conventional name over
    63 characters is cut by SQLAlchemy with a hash, and the catalog holds the cut one."""
    if item.name is None:
        return None
    name = context.dialect.identifier_preparer.format_constraint(item, _alembic_quote=False)
    return str(name) if name else None


def _constraint_names(context: Any, table: str) -> set[str]:
    rows = context.connection.exec_driver_sql(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%(t)s)", {"t": table}
    ).fetchall()
    return {row[0] for row in rows}


def _added_name(context: Any, table: str, before: set[str]) -> str:
    """The name PostgreSQL chose for an unnamed constraint the run just added."""
    added = sorted(_constraint_names(context, table) - before)
    if len(added) != 1:
        raise ToolError(f"Could not tell which constraint on {table} was just added: {added}.")
    return added[0]


def chosen_name(
    context: Any, schema: str | None, table: str, columns: list[str] | None, label: str
) -> str:
    """The name PostgreSQL gives an unnamed unique constraint or primary key (its
    ChooseRelationName): table, columns and label cut to 63 bytes, a number added to the
    label while the name is taken."""
    addition = "_".join(columns)[:63] if columns else None
    for number in range(1000):
        candidate = object_name(table, addition, label if number == 0 else f"{label}{number}")
        if not _relation_exists(context, qualified(schema, candidate)):
            return candidate
    raise ToolError(f"No free name for a {label} on {table}.")


def object_name(name1: str, name2: str | None, label: str) -> str:
    """PostgreSQL's makeObjectName: the longer of the two names is cut first, so that
    ``name1_name2_label`` fits in 63 characters."""
    overhead = (1 if name2 else 0) + len(label) + 1
    first, second = len(name1), len(name2 or "")
    while first + second > 63 - overhead:
        if first > second:
            first -= 1
        else:
            second -= 1
    parts = [name1[:first]] + ([name2[:second]] if name2 else []) + [label]
    return "_".join(parts)


def _relation_exists(context: Any, name: str) -> bool:
    return bool(
        context.connection.exec_driver_sql(
            "SELECT to_regclass(%(name)s) IS NOT NULL", {"name": name}
        ).scalar()
    )


def _index_state(context: Any, name: str) -> bool | None:
    """None: no such index; True: valid; False: INVALID (a failed concurrent build)."""
    rows = context.connection.exec_driver_sql(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(name)s)",
        {"name": name},
    ).fetchall()
    return bool(rows[0][0]) if rows else None


def _constraint_state(context: Any, table: str, name: str) -> bool | None:
    """None: no such constraint on the table; else whether it is validated."""
    rows = context.connection.exec_driver_sql(
        "SELECT convalidated FROM pg_constraint "
        "WHERE conrelid = to_regclass(%(table)s) AND conname = %(name)s",
        {"table": table, "name": name},
    ).fetchall()
    return bool(rows[0][0]) if rows else None


def _is_not_null(context: Any, table: str, column: str) -> bool:
    return bool(
        context.connection.exec_driver_sql(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass(%(table)s) "
            "AND attname = %(column)s AND NOT attisdropped",
            {"table": table, "column": column},
        ).scalar()
    )


def quoted(name: str) -> str:
    """An identifier double-quoted, its quotes doubled: case and dots are kept."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str | None, name: str) -> str:
    """A name as ``to_regclass`` and SQL text read it, schema-qualified when given."""
    return f"{quoted(schema)}.{quoted(name)}" if schema else quoted(name)


def _validate_sql(context: Any, table: str, name: str) -> str:
    return (
        f"ALTER TABLE {table} VALIDATE CONSTRAINT {context.dialect.identifier_preparer.quote(name)}"
    )


def _check_name(table: str, column: str) -> str:
    """The temporary check's name: at most 63 characters, the same on every run."""
    digest = hashlib.sha256(f"{table}.{column}".encode()).hexdigest()[:10]
    return f"sm_nn_{table[:24]}_{column[:20]}_{digest}"
