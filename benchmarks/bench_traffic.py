"""Traffic behind a lock: what clients feel while a migration waits for its table lock.

pgbench clients (8, simple updates on a table) run for a fixed time; another
session holds a lock on that table (ACCESS SHARE in an open transaction: it
blocks no client, only DDL) for 10 s; meanwhile the next revision needs ACCESS
EXCLUSIVE on it. Round 1 runs the pipeline (lock_timeout 0.2 s, the holders
watched from the side between attempts, lock_budget 60 s), round 2 bare `alembic
upgrade head`, which waits for the blocker while every client queues behind it.
Printed: each round's worst client latency, p99 and failed transactions, from
pgbench's per-transaction log, and how long after the blocker's end the migration
completed.

A second scenario: an application session (not a superuser) sits idle in its
transaction for 30 s. The pipeline, run as a role with pg_signal_backend and
pg_read_all_stats, with `cancel_blockers_after: 5` (time to completion), and
without it (lock_budget 8 s: the run stops, naming the holder).

    python benchmarks/bench_traffic.py [--hold 10] [--duration 20] [--quick]
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import (
    BIN,
    alembic_settings,
    arguments,
    create_database,
    drop_database,
    empty_project,
    environment_file,
    failed_transactions,
    finish,
    invoke,
    latencies,
    pgbench,
    postgres,
)

UPDATE_SCRIPT = (
    "\\set id random(1, 10000)\nUPDATE bench_accounts SET balance = balance + 1 WHERE id = :id;\n"
)


def make_project(folder: Path) -> None:
    scripts = empty_project(folder)
    (scripts / "versions" / "t1.py").write_text(
        '"""accounts"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        "revision = 't1'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n"
        '    op.create_table("bench_accounts", sa.Column("id", sa.Integer, primary_key=True),\n'
        '                    sa.Column("balance", sa.Integer, nullable=False))\n'
        '    op.execute("INSERT INTO bench_accounts "\n'
        '               "SELECT i, 0 FROM generate_series(1, 10000) i")\n'
        "\n\ndef downgrade():\n    op.drop_table('bench_accounts')\n"
    )
    (scripts / "versions" / "t2.py").write_text(
        '"""add a column: needs ACCESS EXCLUSIVE briefly"""\nimport sqlalchemy as sa\n'
        "from alembic import op\n\n"
        "revision = 't2'\ndown_revision = 't1'\nbranch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n    op.add_column('bench_accounts', sa.Column('note', sa.Text))\n"
        "\n\ndef downgrade():\n    op.drop_column('bench_accounts', 'note')\n"
    )
    (scripts / "models.py").write_text(
        "import sqlalchemy as sa\nmetadata = sa.MetaData()\n"
        'sa.Table("bench_accounts", metadata, sa.Column("id", sa.Integer, primary_key=True),\n'
        '         sa.Column("balance", sa.Integer, nullable=False), sa.Column("note", sa.Text))\n'
    )


def hold_lock(url: str, seconds: float, started: threading.Event, ended: list[float]) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(text("LOCK TABLE bench_accounts IN ACCESS SHARE MODE"))
        started.set()
        time.sleep(seconds)
        connection.commit()
        ended.append(time.perf_counter())
    engine.dispose()


class LockWaitMonitor:
    """Polls pg_stat_activity: how long the migration's ALTER waited for its lock, in all."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.waited = 0.0
        self.first: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.url, poolclass=NullPool)
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query ILIKE 'ALTER TABLE bench_accounts%'"
        )
        with engine.connect() as connection:
            last = time.perf_counter()
            while not self.stop.is_set():
                waiting = connection.execute(query).scalar()
                connection.rollback()
                now = time.perf_counter()
                if waiting:
                    self.waited += now - last
                    self.first = self.first or now
                last = now
                time.sleep(0.02)
        engine.dispose()


def run_round(
    admin: str, work: Path, environments: Path, side: str, duration: int, hold: float
) -> dict[str, float]:
    url = create_database(admin, prefix=f"traffic_{side}")
    env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(environments)}
    subprocess.run(
        [str(BIN / "alembic"), "-c", str(work / "alembic.ini"), "upgrade", "t1"],
        env=env,
        check=True,
        capture_output=True,
    )
    script = work / "update.sql"
    script.write_text(UPDATE_SCRIPT)
    prefix = f"pgbench_{side}"
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    bench = pgbench(url, script, logs / prefix, duration)
    time.sleep(2)
    started, ended = threading.Event(), []
    blocker = threading.Thread(target=hold_lock, args=(url, hold, started, ended))
    blocker.start()
    started.wait(10)
    lock_taken = time.perf_counter()
    monitor = LockWaitMonitor(url)
    monitor.thread.start()
    time.sleep(0.5)
    began = time.perf_counter()
    if side == "pipeline":
        migration = subprocess.run(
            invoke("migrate", "--env", "bench", "--yes", "--no-backup"),
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    else:
        migration = subprocess.run(
            [str(BIN / "alembic"), "-c", str(work / "alembic.ini"), "upgrade", "head"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finished = time.perf_counter()
    migration_seconds = finished - began
    output, _ = bench.communicate(timeout=duration + 60)
    blocker.join()
    monitor.stop.set()
    monitor.thread.join()
    values = latencies(logs, prefix)
    drop_database(admin, url)
    if migration.returncode != 0:
        raise SystemExit(f"{side} migration failed:\n{migration.stdout}\n{migration.stderr}")
    return {
        "worst_s": round(values[-1], 3) if values else float("nan"),
        "p99_s": round(values[int(len(values) * 0.99) - 1], 4) if values else float("nan"),
        "transactions": len(values),
        "failed": failed_transactions(output),
        "migration_s": round(migration_seconds, 2),
        "done_after_blocker_s": round(finished - ended[0], 2) if ended else None,
        "alter_waited_s": round(monitor.waited, 2),
        "alter_first_wait_after_blocker_s": round(monitor.first - lock_taken, 2)
        if monitor.first
        else None,
    }


def idle_round(admin: str, work: Path, environments: Path, cancel: bool) -> dict[str, object]:
    """An application role idle in its transaction for 30 s; the migration as a role
    with the grants, with or without cancel_blockers_after."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = create_database(admin, prefix="traffic_idle")
    tag = make_url(url).database[-10:]
    migrator, app = f"bench_mig_{tag}", f"bench_app_{tag}"
    secret = secrets.token_hex(8)
    owner = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with owner.connect() as connection:
        connection.execute(text(f"CREATE ROLE {migrator} LOGIN PASSWORD '{secret}'"))
        connection.execute(text(f"CREATE ROLE {app} LOGIN PASSWORD '{secret}'"))
        connection.execute(text(f"GRANT pg_signal_backend, pg_read_all_stats TO {migrator}"))
        connection.execute(text(f"ALTER SCHEMA public OWNER TO {migrator}"))
    mig_url = make_url(url).set(username=migrator, password=secret)
    app_url = make_url(url).set(username=app, password=secret)
    env = os.environ | {
        "DATABASE_URL": mig_url.render_as_string(hide_password=False),
        "MIGRATE_ENVIRONMENTS_DIR": str(environments),
    }
    subprocess.run(
        [str(BIN / "alembic"), "-c", str(work / "alembic.ini"), "upgrade", "t1"],
        env=env,
        check=True,
        capture_output=True,
    )
    grant = create_engine(mig_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with grant.connect() as connection:
        connection.execute(text(f"GRANT SELECT ON bench_accounts TO {app}"))
    grant.dispose()
    taken, idle_ended = threading.Event(), []

    def sit_idle() -> None:
        engine = create_engine(app_url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT count(*) FROM bench_accounts"))
                taken.set()
                time.sleep(30)
                connection.rollback()
                idle_ended.append("lived 30 s")
        except Exception as exc:  # noqa: BLE001 - terminated is the expected ending
            idle_ended.append(type(exc).__name__)
        engine.dispose()

    holder = threading.Thread(target=sit_idle, daemon=True)
    holder.start()
    taken.wait(10)
    began = time.perf_counter()
    migration = subprocess.run(
        invoke("migrate", "--env", "idle_cancel" if cancel else "idle_wait", "--yes"),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - began
    holder.join(40)
    owner.dispose()
    admin_engine = create_engine(admin, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
        connection.execute(text(f"DROP ROLE IF EXISTS {migrator}"))
        connection.execute(text(f"DROP ROLE IF EXISTS {app}"))
    admin_engine.dispose()
    named = "Held by: pid" in migration.stderr and "idle in transaction" in migration.stderr
    return {
        "exit": migration.returncode,
        "seconds": round(seconds, 2),
        "holder": idle_ended[0] if idle_ended else "?",
        "holders_named": named,
    }


def main() -> None:
    args = arguments(__doc__, runs=1, hold=10.0, duration=20)
    hold, duration = (2.0, 6) if args.quick else (args.hold, args.duration)
    work = Path(tempfile.mkdtemp(prefix="bench-traffic-"))
    make_project(work)
    environments = environment_file(
        work,
        "bench",
        alembic=alembic_settings(work),
        migration={"lock_timeout": 0.2, "lock_budget": 60, "statement_timeout": 0},
    )
    for name, extra in (("idle_cancel", {"cancel_blockers_after": 5}), ("idle_wait", {})):
        environment_file(
            work,
            name,
            alembic=alembic_settings(work),
            migration={"lock_timeout": 0.2, "lock_budget": 8, **extra},
        )
    with postgres() as admin:
        rounds = {
            side: run_round(admin, work, environments, side, duration, hold)
            for side in ("pipeline", "bare")
        }
        idle = (
            {}
            if args.quick
            else {
                "cancel": idle_round(admin, work, environments, cancel=True),
                "wait": idle_round(admin, work, environments, cancel=False),
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"8 pgbench clients for {duration} s; a session holds ACCESS SHARE for {hold:g} s; "
        "the next revision needs ACCESS EXCLUSIVE"
    )
    for side, figures in rounds.items():
        label = "pipeline (lock_timeout 0.2 s, watched)" if side == "pipeline" else "bare alembic"
        print(
            f"{label:<38} worst {figures['worst_s']:.3f} s, p99 {figures['p99_s']:.4f} s, "
            f"failed {figures['failed']}, {figures['transactions']} transactions, "
            f"migration took {figures['migration_s']:.1f} s, done "
            f"{figures['done_after_blocker_s']} s after the blocker's end"
        )
        print(
            f"{'':<38} its ALTER queued {figures['alter_waited_s']:.1f} s in all, first "
            f"{figures['alter_first_wait_after_blocker_s']} s after the blocker took its lock "
            "(the rest is start-up under the client load)"
        )
    ratio = rounds["pipeline"]["worst_s"] / rounds["bare"]["worst_s"]
    print(f"worst latency ratio pipeline/bare: {ratio:.2f}")
    if idle:
        cancel, wait = idle["cancel"], idle["wait"]
        print(
            "idle in transaction for 30 s, cancel_blockers_after 5: "
            f"exit {cancel['exit']} in {cancel['seconds']:.1f} s (holder: {cancel['holder']})"
        )
        print(
            "idle in transaction for 30 s, no cancelling, lock_budget 8: "
            f"exit {wait['exit']} in {wait['seconds']:.1f} s, holder named: {wait['holders_named']}"
        )
    finish(
        "traffic",
        {
            "hold_s": hold,
            "duration_s": duration,
            **{f"{side}_{k}": v for side, figures in rounds.items() for k, v in figures.items()},
            "worst_ratio": round(ratio, 3),
            **{f"idle_{side}_{k}": v for side, figures in idle.items() for k, v in figures.items()},
        },
    )


if __name__ == "__main__":
    main()
