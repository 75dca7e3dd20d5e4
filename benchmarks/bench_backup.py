"""Backup speed: `invoke backup` against raw `pg_dump` (same format and compression),
and directory format with 2 jobs against custom format, on a pgbench database of
about 1 GB (scale 70). Goal: ours <= 1.05x raw pg_dump.

    python benchmarks/bench_backup.py [--scale 70] [--runs 3] [--quick]
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


def database_bytes(url: str) -> int:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        size = connection.execute(text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    return int(size)


def main() -> None:
    args = arguments(__doc__, runs=3, scale=70)
    runs, scale = (1, 1) if args.quick else (args.runs, args.scale)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    custom_envs = environment_file(
        work / "custom", "bench", backup={"format": "custom", "compression": 6}
    )
    dir_envs = environment_file(
        work / "dir", "bench", backup={"format": "directory", "jobs": 2, "compression": 6}
    )
    raw_file = work / "raw.dump"
    ours, raw, directory, verify_share = [], [], [], []
    with postgres() as admin:
        url = create_database(admin)
        child = libpq_env(url)
        print(f"generating pgbench data at scale {scale} ...", file=sys.stderr)
        subprocess.run(
            [which("pgbench"), "-i", "-q", "-s", str(scale)],
            env=child,
            check=True,
            capture_output=True,
        )
        size = database_bytes(url)
        for run in range(runs):
            order = ("ours", "raw", "dir") if run % 2 == 0 else ("dir", "raw", "ours")
            for side in order:
                if side == "raw":
                    raw.append(
                        timed_run(
                            [
                                which("pg_dump"),
                                "--no-password",
                                "--format=custom",
                                "--compress=6",
                                f"--file={raw_file}",
                            ],
                            child,
                        )
                    )
                    raw_file.unlink()
                    continue
                envs = custom_envs if side == "ours" else dir_envs
                env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(envs)}
                seconds = timed_run(invoke("backup", "--env", "bench"), env)
                folder = envs.parent / "backups"
                manifest = json.loads(next(folder.glob("*.manifest.json")).read_text())
                if side == "ours":
                    ours.append(seconds)
                    verify_share.append(manifest["verify_seconds"] / seconds)
                else:
                    directory.append(seconds)
                shutil.rmtree(folder)
        drop_database(admin, url)
    shutil.rmtree(work, ignore_errors=True)
    mb = size / 1024 / 1024
    ratio = median(ours) / median(raw)
    print(f"database: {mb:,.0f} MB (pgbench scale {scale}), {runs} run(s) each side")
    print(
        f"raw pg_dump --format=custom:        median {median(raw):.2f} s "
        f"({mb / median(raw):.0f} MB/s)"
    )
    print(
        f"invoke backup (custom, verified):   median {median(ours):.2f} s "
        f"({mb / median(ours):.0f} MB/s), verification {median(verify_share):.0%} of it"
    )
    print(
        f"invoke backup (directory, 2 jobs):  median {median(directory):.2f} s "
        f"({mb / median(directory):.0f} MB/s)"
    )
    print(
        f"ratio ours/raw: {ratio:.3f} (goal <= 1.05); "
        f"directory 2 jobs / custom: {median(directory) / median(ours):.2f}"
    )
    finish(
        "backup",
        {
            "database_mb": round(mb),
            "runs": runs,
            "raw_s": round(median(raw), 3),
            "ours_s": round(median(ours), 3),
            "ratio": round(ratio, 3),
            "directory_2_jobs_s": round(median(directory), 3),
            "verify_share": round(median(verify_share), 3),
        },
    )


if __name__ == "__main__":
    main()
