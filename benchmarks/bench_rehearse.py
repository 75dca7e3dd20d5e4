"""Rehearsal cost: `invoke rehearse --from-backup latest` (restore into a copy, the example
history upgraded under observation, validated, dropped) against the same done by hand
(createdb, `pg_restore -d`, bare `alembic upgrade head`, dropdb), on a pgbench database
of about 1 GB (scale 70) that also holds the example schema at 0003 with 100,000 users.
Also prints a rehearsal from a fresh backup, and the lock samples per second the
observer took. Goal: ours <= 1.2x by hand; the sampling must not slow the migration.
The proof case: `invoke backups --prove` of that backup (restored into a scratch
database, every table fingerprinted and compared with the source's fingerprints at
the dump's snapshot) against restoring it by hand (createdb, `pg_restore -d`,
dropdb). Goal: <= 1.2x. The traffic case: the example history rehearsed with
`--traffic 4`, each revision's worst client wait.

    python benchmarks/bench_rehearse.py [--scale 70] [--runs 3] [--quick] [--only proof]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    BIN,
    ROOT,
    arguments,
    create_database,
    drop_database,
    environment_file,
    finish,
    invoke,
    libpq_env,
    median,
    postgres,
    timed_run,
    which,
)


def seed_example(url: str, users: int) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, email, name) SELECT i, 'User' || i || '@Example.org', "
                f"md5(i::text) FROM generate_series(1, {users}) i"
            )
        )
        connection.execute(
            text("INSERT INTO orders (user_id, total_cents) SELECT id, id * 100 FROM users")
        )
    engine.dispose()


def by_hand(admin: str, backup: Path) -> float:
    """createdb, pg_restore -d, alembic upgrade head, dropdb: the wall time of all four."""
    import time

    started = time.perf_counter()
    copy = create_database(admin, "byhand")
    child = libpq_env(copy)
    timed_run(
        [which("pg_restore"), "--no-owner", f"--dbname={child['PGDATABASE']}", str(backup)], child
    )
    alembic = os.environ | {"DATABASE_URL": copy}
    timed_run([str(BIN / "alembic"), "upgrade", "head"], alembic, cwd=ROOT)
    drop_database(admin, copy)
    return time.perf_counter() - started


def proof_cost(admin: str, backup: Path, env: dict[str, str], runs: int) -> dict:
    """`invoke backups --prove` of ``backup`` against createdb + pg_restore -d + dropdb."""
    import time

    proving, restoring = [], []
    for run in range(runs):
        for side in ("prove", "hand") if run % 2 == 0 else ("hand", "prove"):
            if side == "prove":
                proving.append(
                    timed_run(invoke("backups", "--env", "bench", "--prove", str(backup)), env)
                )
                continue
            started = time.perf_counter()
            copy = create_database(admin, "byhand")
            child = libpq_env(copy)
            restore = [which("pg_restore"), "--no-owner", f"--dbname={child['PGDATABASE']}"]
            timed_run([*restore, str(backup)], child)
            drop_database(admin, copy)
            restoring.append(time.perf_counter() - started)
    ratio = median(proving) / median(restoring)
    print(
        f"invoke backups --prove (restore into a scratch database, fingerprint, compare): "
        f"{median(proving):.2f} s; by hand (createdb, pg_restore -d, dropdb): "
        f"{median(restoring):.2f} s; ratio {ratio:.3f} (goal <= 1.2)"
    )
    return {
        "prove_s": round(median(proving), 3),
        "restore_by_hand_s": round(median(restoring), 3),
        "ratio": round(ratio, 3),
    }


def traffic_case(backup: Path, env: dict[str, str]) -> dict:
    """The example history rehearsed from ``backup`` with 4 clients on the copy: each
    revision's worst wait, as the report gives it."""
    done = subprocess.run(
        invoke(
            "rehearse", "--env", "bench", "--from-backup", str(backup), "--traffic", "4", "--json"
        ),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(done.stdout)
    worst = {r["revision"]: (r.get("app_waits") or {}).get("worst_ms") for r in report["revisions"]}
    print(
        f"rehearse --traffic 4: {report['traffic']['operations']:,} client operations on "
        f"{', '.join(report['traffic']['tables'])}; worst wait per revision (ms): {worst}"
    )
    return {"operations": report["traffic"]["operations"], "worst_ms": worst}


def observer_cost(admin: str, backup: Path, envs: Path, runs: int) -> tuple[float, float]:
    """The same upgrade of a restored copy, in process, with and without the rehearsal's
    observer beside it (median seconds each): what the sampling costs the migration."""
    import time

    from safe_migrations.core.config import load_environment
    from safe_migrations.engines.pgobserver import RevisionObserver
    from safe_migrations.pipeline.upgrade import run_migrations
    from safe_migrations.project.alembic_api import DEFAULT_PROJECT

    plain, observed = [], []
    for run in range(-1, runs):  # run -1 warms up (imports, scripts, engines), unrecorded
        for side in ("plain", "observed") if run % 2 == 0 else ("observed", "plain"):
            copy = create_database(admin, "cost")
            child = libpq_env(copy)
            restore = [which("pg_restore"), "--no-owner", f"--dbname={child['PGDATABASE']}"]
            timed_run([*restore, str(backup)], child)
            env = load_environment("bench", environ={"DATABASE_URL": copy}, directory=envs)
            observer = RevisionObserver(env) if side == "observed" else None
            started = time.perf_counter()
            run_migrations(env, DEFAULT_PROJECT, "head", observer=observer)
            if run >= 0:
                (observed if observer else plain).append(time.perf_counter() - started)
            if observer is not None:
                observer.stop()
            drop_database(admin, copy)
    return median(plain), median(observed)


def main() -> None:
    args = arguments(__doc__, runs=3, scale=70, users=100_000, only="all")
    runs, scale, users = (1, 1, 1000) if args.quick else (args.runs, args.scale, args.users)
    work = Path(tempfile.mkdtemp(prefix="bench-rehearse-"))
    envs = environment_file(work, "bench", backup={"keep": 2})
    ours, fresh, hand, rates, upgrade_ms = [], [], [], [], []
    with postgres() as admin:
        url = create_database(admin)
        env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(envs)}
        print(f"generating pgbench data at scale {scale} ...", file=sys.stderr)
        timed_run([which("psql"), "-c", "CREATE SCHEMA bench"], libpq_env(url))
        subprocess.run(  # in a schema of their own: the models do not know these tables
            [which("pgbench"), "-i", "-q", "-s", str(scale)],
            env=libpq_env(url) | {"PGOPTIONS": "-c search_path=bench"},
            check=True,
            capture_output=True,
        )
        timed_run(invoke("migrate", "--env", "bench", "--revision", "0003", "--yes"), env)
        seed_example(url, users)
        proving_backup = timed_run(invoke("backup", "--env", "bench", "--prove"), env)
        backup = sorted((work / "backups").glob("*.dump"))[-1]
        size_mb = backup.stat().st_size / 2**20
        print(f"invoke backup --prove: {proving_backup:.2f} s ({size_mb:,.0f} MB dump)")
        proof = proof_cost(admin, backup, env, runs)
        if args.only == "proof":
            drop_database(admin, url)
            finish("rehearse-proof", {"scale": scale, "runs": runs, "proof": proof})
            return
        reports = work / "reports" / "rehearsals"
        for run in range(runs):
            for side in ("ours", "hand", "fresh") if run % 2 == 0 else ("fresh", "hand", "ours"):
                if side == "hand":
                    hand.append(by_hand(admin, backup))
                    continue
                flags = ["--from-backup", str(backup)] if side == "ours" else []
                seconds = timed_run(invoke("rehearse", "--env", "bench", *flags), env)
                report = json.loads(sorted(reports.glob("*.json"))[-1].read_text())
                assert report["success"], report["error"]
                (ours if side == "ours" else fresh).append(seconds)
                rates.append(report["samples_per_second"])
                upgrade_ms.append(sum(r["duration_ms"] for r in report["revisions"]))
        plain_s, observed_s = observer_cost(admin, backup, envs, runs)
        traffic = traffic_case(backup, env)
        drop_database(admin, url)
    shutil.rmtree(work, ignore_errors=True)
    ratio = median(ours) / median(hand)
    print(
        f"pgbench scale {scale} + example schema at 0003 ({users:,} users); dump {size_mb:,.0f} MB"
    )
    print(f"by hand (createdb, pg_restore -d, alembic upgrade head, dropdb): {median(hand):.2f} s")
    print(
        f"invoke rehearse --from-backup (restore, observed upgrade, validate): {median(ours):.2f} s"
    )
    print(f"invoke rehearse from a fresh backup:                           {median(fresh):.2f} s")
    print(
        f"ratio ours/by hand: {ratio:.3f} (goal <= 1.2); observer {median(rates):.0f} samples/s; "
        f"the 4 revisions took {median(upgrade_ms):.0f} ms on the copy"
    )
    print(
        f"the same upgrade in process: {plain_s:.3f} s plain, {observed_s:.3f} s observed: "
        f"ratio {observed_s / plain_s:.3f} (the sampling must not slow the migration)"
    )
    finish(
        "rehearse",
        {
            "scale": scale,
            "runs": runs,
            "dump_mb": round(size_mb, 1),
            "by_hand_s": round(median(hand), 3),
            "ours_s": round(median(ours), 3),
            "fresh_s": round(median(fresh), 3),
            "ratio": round(ratio, 3),
            "samples_per_second": median(rates),
            "revisions_ms": median(upgrade_ms),
            "upgrade_plain_s": round(plain_s, 3),
            "upgrade_observed_s": round(observed_s, 3),
            "observer_ratio": round(observed_s / plain_s, 3),
            "backup_prove_s": round(proving_backup, 3),
            "traffic": traffic,
            "proof": proof,
        },
    )


if __name__ == "__main__":
    main()
