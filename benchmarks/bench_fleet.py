"""Fleet speed: 32 databases, the same 10-revision history, `invoke migrate --jobs 4`
against `--jobs 1` (one invocation each, members found by fleet.discover) and against
a shell loop of bare `alembic upgrade head`, one database after another. Goals: --jobs 4
at most 0.5x of --jobs 1, and faster than the loop of bare Alembic.

    python benchmarks/bench_fleet.py [--databases 32] [--revisions 10] [--runs 2] [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from bench_pipeline import generate_project
from common import (
    BIN,
    _admin,
    alembic_settings,
    arguments,
    environment_file,
    finish,
    invoke,
    median,
    postgres,
    timed_run,
)


def fresh_databases(admin: str, prefix: str, count: int) -> list[str]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    engine = _admin(admin)
    names = [f"{prefix}_{i:03d}" for i in range(count)]
    with engine.connect() as connection:
        for name in names:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return [make_url(admin).set(database=n).render_as_string(hide_password=False) for n in names]


def main() -> None:
    args = arguments(__doc__, runs=2, databases=32, revisions=10)
    runs, count = (1, 4) if args.quick else (args.runs, args.databases)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    generate_project(work / "project", args.revisions)
    prefix = f"bf{uuid.uuid4().hex[:6]}"
    from sqlalchemy.engine import make_url

    jobs4, jobs1, loop = [], [], []
    with postgres() as admin:
        url = make_url(admin)
        envs = environment_file(
            work,
            "fleet",
            database={"url": "", "connect_timeout": 10},
            fleet={
                "jobs": 4,
                "discover": {
                    "server": "postgresql+psycopg2://${DB_USER}:${DB_PASSWORD}@${DB_HOST}:"
                    "${DB_PORT}/postgres",
                    "like": f"{prefix}\\_%",
                },
            },
            alembic=alembic_settings(work / "project"),
        )
        fleet_env = os.environ | {
            "MIGRATE_ENVIRONMENTS_DIR": str(envs),
            "DB_USER": url.username or "",
            "DB_PASSWORD": url.password or "",
            "DB_HOST": url.host or "",
            "DB_PORT": str(url.port or 5432),
        }
        fleet_env.pop("DATABASE_URL", None)
        for run in range(runs):
            for side in ("4", "1", "loop") if run % 2 == 0 else ("loop", "1", "4"):
                urls = fresh_databases(admin, prefix, count)
                if side == "loop":
                    ini = str(work / "project" / "alembic.ini")
                    total = 0.0
                    for each in urls:  # what a team's shell loop does today
                        total += timed_run(
                            [str(BIN / "alembic"), "-c", ini, "upgrade", "head"],
                            os.environ | {"DATABASE_URL": each},
                        )
                    loop.append(total)
                    continue
                argv = invoke("migrate", "--env", "fleet", "--yes", "--no-backup", "--jobs", side)
                (jobs4 if side == "4" else jobs1).append(timed_run(argv, fleet_env))
        from sqlalchemy import text

        engine = _admin(admin)
        with engine.connect() as connection:
            for i in range(count):
                connection.execute(text(f'DROP DATABASE IF EXISTS "{prefix}_{i:03d}" WITH (FORCE)'))
        engine.dispose()
    shutil.rmtree(work, ignore_errors=True)
    parallel, serial, shell = median(jobs4), median(jobs1), median(loop)
    print(f"{count} databases, {args.revisions} revisions each, {runs} run(s) per side, 2 cores")
    print(f"invoke migrate --jobs 4:             {parallel:.2f} s")
    print(f"invoke migrate --jobs 1:             {serial:.2f} s")
    print(f"shell loop of alembic upgrade head:  {shell:.2f} s")
    print(
        f"ratio --jobs 4 / --jobs 1: {parallel / serial:.3f} (goal <= 0.5); "
        f"--jobs 4 / bare Alembic loop: {parallel / shell:.3f} (goal < 1)"
    )
    finish(
        "fleet",
        {
            "databases": count,
            "revisions": args.revisions,
            "runs": runs,
            "jobs4_s": round(parallel, 3),
            "jobs1_s": round(serial, 3),
            "alembic_loop_s": round(shell, 3),
            "ratio_jobs4_jobs1": round(parallel / serial, 3),
            "ratio_jobs4_alembic_loop": round(parallel / shell, 3),
        },
    )


if __name__ == "__main__":
    main()
