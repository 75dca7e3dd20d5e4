"""Backup speed: `invoke backup` against raw `pg_dump` (same format and compression),
and directory format with 2 jobs against custom format, on a pgbench database of
about 1 GB (scale 70). Goal: ours <= 1.05x raw pg_dump. The remote case: `invoke
backup` streamed to an S3 store (moto's server on loopback, sharing the 2 cores)
against raw pg_dump to a local file, with the peak local disk the backup used.
Goals: ours <= 1.05x; remote <= 1.15x, peak local disk well under the dump's size.
The MariaDB case: `invoke backup` (mariadb-dump, compressed by a thread beside it,
the completion marker checked from the stream) against raw `mariadb-dump ... |
gzip -6` on a pgbench-like accounts table of scale x 100,000 rows. Goal: <= 1.15x.

    python benchmarks/bench_backup.py [--scale 70] [--runs 3] [--quick] [--only mariadb]
"""

from __future__ import annotations

import contextlib
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
    mariadb,
    median,
    moto_server,
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


class DiskWatcher:
    """The most bytes a folder held while a backup ran, sampled every 10 ms."""

    def __init__(self, folder: Path) -> None:
        import threading

        self.folder = folder
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DiskWatcher:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(0.01):
            used = 0
            for path in self.folder.rglob("*") if self.folder.exists() else []:
                with contextlib.suppress(OSError):
                    used += path.stat().st_size if path.is_file() else 0
            self.peak = max(self.peak, used)


def mariadb_case(scale: int, runs: int, work: Path) -> dict:
    """invoke backup against raw mariadb-dump piped through gzip -6, same options."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from safe_migrations.engines.mysqldump import option_file

    envs = environment_file(work / "maria", "bench", backup={"compression": 6})
    ours, raw = [], []
    with mariadb() as admin:
        url = create_database(admin)
        engine = create_engine(url, poolclass=NullPool)
        print(f"generating {scale * 100_000:,} MariaDB rows ...", file=sys.stderr)
        with engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE TABLE accounts (aid INT PRIMARY KEY, bid INT, abalance INT, "
                    "filler CHAR(84)) ENGINE=InnoDB"
                )
            )
            connection.execute(
                text(
                    f"INSERT INTO accounts SELECT seq, seq % {scale}, 0, '' "
                    f"FROM seq_1_to_{scale * 100_000}"
                )
            )
            connection.execute(text("ANALYZE TABLE accounts"))
            size = connection.execute(
                text(
                    "SELECT SUM(data_length + index_length) FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()"
                )
            ).scalar()
        engine.dispose()
        database = url.rsplit("/", 1)[1]
        target = work / "raw.sql.gz"
        for run in range(runs):
            for side in ("ours", "raw") if run % 2 == 0 else ("raw", "ours"):
                if side == "raw":
                    with option_file(url) as (options, descriptor):  # a pipe: read once
                        dump = (
                            f"{which('mariadb-dump')} --defaults-extra-file={options} "
                            "--single-transaction --routines --triggers --events --hex-blob "
                            f"--no-tablespaces {database} | gzip -6 > {target}"
                        )
                        raw.append(
                            timed_run(["sh", "-c", dump], dict(os.environ), pass_fds=(descriptor,))
                        )
                    target.unlink()
                    continue
                env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(envs)}
                ours.append(timed_run(invoke("backup", "--env", "bench"), env))
                shutil.rmtree(envs.parent / "backups")
        drop_database(admin, url)
    ratio = median(ours) / median(raw)
    print(
        f"MariaDB, {int(size) / 1024 / 1024:,.0f} MB: raw mariadb-dump | gzip -6 median "
        f"{median(raw):.2f} s; invoke backup (compressor thread, checked on the way) median "
        f"{median(ours):.2f} s; ratio {ratio:.3f} (goal <= 1.15)"
    )
    return {
        "rows": scale * 100_000,
        "database_mb": round(int(size) / 1024 / 1024),
        "raw_s": round(median(raw), 3),
        "ours_s": round(median(ours), 3),
        "ratio": round(ratio, 3),
    }


def main() -> None:
    args = arguments(__doc__, runs=3, scale=70, only="all")
    runs, scale = (1, 1) if args.quick else (args.runs, args.scale)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    if args.only == "mariadb":
        maria = mariadb_case(scale, runs, work)
        shutil.rmtree(work, ignore_errors=True)
        finish("backup-mariadb", {"runs": runs, "mariadb": maria})
        return
    custom_envs = environment_file(
        work / "custom", "bench", backup={"format": "custom", "compression": 6}
    )
    dir_envs = environment_file(
        work / "dir", "bench", backup={"format": "directory", "jobs": 2, "compression": 6}
    )
    raw_file = work / "raw.dump"
    ours, raw, directory, verify_share, remote, peaks = [], [], [], [], [], []
    with postgres() as admin, moto_server() as endpoint:
        import boto3

        aws = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        ).create_bucket(Bucket="bench")
        storage = {"type": "s3", "bucket": "bench", "prefix": "b/", "endpoint_url": endpoint}
        remote_envs = environment_file(
            work / "s3", "bench", backup={"compression": 6, "keep": 1, "storage": storage}
        )
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
            order = ("ours", "raw", "dir", "s3") if run % 2 == 0 else ("s3", "dir", "raw", "ours")
            for side in order:
                if side == "s3":
                    env = (
                        os.environ
                        | aws
                        | {
                            "DATABASE_URL": url,
                            "MIGRATE_ENVIRONMENTS_DIR": str(remote_envs),
                        }
                    )
                    folder = remote_envs.parent / "backups"
                    with DiskWatcher(folder) as watcher:
                        remote.append(timed_run(invoke("backup", "--env", "bench"), env))
                    peaks.append(watcher.peak)
                    continue
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
                    raw_size = raw_file.stat().st_size
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
    maria = mariadb_case(scale, runs, work)
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
    remote_ratio = median(remote) / median(raw)
    print(
        f"invoke backup to S3 (moto, loopback): median {median(remote):.2f} s, ratio to raw "
        f"pg_dump to a file {remote_ratio:.3f} (goal <= 1.15); peak local disk "
        f"{max(peaks) / 1024:,.0f} KiB (the dump: {raw_size / 1024 / 1024:,.0f} MB)"
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
            "remote_s": round(median(remote), 3),
            "remote_ratio": round(remote_ratio, 3),
            "remote_peak_local_bytes": max(peaks),
            "dump_bytes": raw_size,
            "mariadb": maria,
        },
    )


if __name__ == "__main__":
    main()
