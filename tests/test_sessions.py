"""One engine per database for a run: every kind of session (health, lock, migration,
validation) opens on the same engine and dialect, and each still gets its own name on
the server, its own lock and statement limits and its own transaction mode."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text

from safe_migrations.core.config import Environment
from safe_migrations.core.database import connect, make_engine


def test_postgresql_sessions_share_one_engine_and_keep_their_own_limits(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(pg_url)
    shown = "SELECT current_setting('application_name'), current_setting('lock_timeout'), "
    shown += "current_setting('statement_timeout')"
    with connect(env, role="migrate", lock_timeout=1.5, statement_timeout=30) as migrate:
        name, lock, statement = migrate.execute(text(shown)).one()
        assert name.startswith("alembic-invoke:migrate:") and (lock, statement) == ("1500ms", "30s")
        with connect(env, role="validate") as validate:
            name, lock, statement = validate.execute(text(shown)).one()
            assert name.startswith("alembic-invoke:validate:") and lock == statement == "0"
            assert validate.dialect is migrate.dialect  # initialised once, one SQL cache
            validate.execute(text("CREATE TABLE never_committed (id int)"))  # closed: rolled back
        with connect(env, role="lock", autocommit=True) as lock_session:
            assert lock_session.execute(text(shown)).one()[0].startswith("alembic-invoke:lock:")
            lock_session.execute(text("CREATE TABLE committed_at_once (id int)"))
            tables = "SELECT count(*) FROM pg_tables WHERE tablename LIKE '%committed%'"
            with connect(env, role="status") as other:
                assert other.execute(text(tables)).scalar() == 1  # the autocommitted one
        # a session opened meanwhile on another thread keeps its own role
        import threading

        seen: list[str] = []
        worker = threading.Thread(
            target=lambda: seen.append(
                make_engine(env, role="watch").connect().execute(text(shown)).one()[0]
            )
        )
        worker.start()
        worker.join()
        assert seen[0].startswith("alembic-invoke:watch:")
        assert migrate.execute(text("SHOW lock_timeout")).scalar() == "1500ms"


def test_mariadb_sessions_share_one_engine_and_keep_their_own_lock_waits(
    mysql_url: str, make_env: Callable[..., Environment]
) -> None:
    env = make_env(mysql_url)
    waits = "SELECT @@session.lock_wait_timeout, @@session.innodb_lock_wait_timeout"
    with connect(env, role="migrate", lock_timeout=1.5) as migrate:
        assert tuple(migrate.execute(text(waits)).one()) == (2, 2)  # whole seconds, rounded up
        with connect(env, role="validate") as validate:
            global_waits = "SELECT @@global.lock_wait_timeout, @@global.innodb_lock_wait_timeout"
            assert tuple(validate.execute(text(waits)).one()) == tuple(
                validate.execute(text(global_waits)).one()
            )
            assert validate.dialect is migrate.dialect


def test_a_migrate_run_opens_seven_connections_on_one_engine(
    pg_url: str, make_env: Callable[..., Environment]
) -> None:
    """Health's checks on its connection check's connection, validation on one, the
    post-revision as validation read it: health, lock, the revision under the lock, the
    compare before, the migration, the lock watcher and validation (ten before)."""
    from helpers import QUIET, UNATTENDED
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    from safe_migrations.core import database
    from safe_migrations.pipeline.migrate import migrate

    env = make_env(pg_url)
    opened: list[object] = []

    def count(_dbapi: object, record: object) -> None:
        opened.append(database.opened_for(record)[0])

    event.listen(Pool, "connect", count)
    try:
        assert migrate(env, UNATTENDED, console=QUIET).success
    finally:
        event.remove(Pool, "connect", count)
    assert sorted(opened) == sorted(
        ["health", "lock", "status", "validate", "migrate", "watch", "validate"]
    )
    assert len({k for k in database._ENGINES if k[0] == env.url}) == 1
