"""Backups in an S3-compatible store (issue 17), against moto's standalone server over
loopback HTTP: streamed, verified before the upload completes, restored from the store."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pyrage
import pytest
from helpers import QUIET, cli_env, run_invoke, seed, table_fingerprints
from pgcluster import PASSWORD
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import BackupError, BlockedError, ConfigError
from safe_migrations.operations.standalone import backup, restore, rollback
from safe_migrations.pipeline.backup import all_backups, take_backup
from safe_migrations.pipeline.health import run_health
from safe_migrations.pipeline.migrate import RunOptions, migrate
from safe_migrations.pipeline.status import read_current
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT


def client(storage: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=storage["endpoint_url"], region_name="us-east-1")


def keys(storage: dict[str, str]) -> list[str]:
    listed = client(storage).list_objects_v2(Bucket=storage["bucket"])
    return sorted(item["Key"] for item in listed.get("Contents", []))


def damage(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE order_items"))
        connection.execute(text("DELETE FROM orders WHERE id % 2 = 0"))
    engine.dispose()


def test_backup_to_the_store_then_restore_latest_gives_identical_data(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    env = make_env(pg_url, backup={"storage": bucket})
    seed(env, rows=200)
    before = table_fingerprints(pg_url)
    record = backup(env, QUIET)
    path = record.backup["path"]
    assert path.startswith(f"s3://{bucket['bucket']}/staging/staging-") and path.endswith(".dump")
    name = path.rsplit("/", 1)[1]
    assert keys(bucket) == [f"staging/{name}", f"staging/{name}.manifest.json"]
    body = client(bucket).get_object(Bucket=bucket["bucket"], Key=f"staging/{name}")["Body"]
    assert hashlib.sha256(body.read()).hexdigest() == record.backup["sha256"]  # what is stored
    tags = client(bucket).get_object_tagging(Bucket=bucket["bucket"], Key=f"staging/{name}")
    assert {t["Key"]: t["Value"] for t in tags["TagSet"]}["sha256"] == record.backup["sha256"]
    local = sorted(p.relative_to(env.backup_dir) for p in env.backup_dir.rglob("*"))
    assert local == [Path("remote"), Path("remote") / f"{name}.manifest.json"]  # no dump here
    assert [b["path"] for b in all_backups(env)] == [path]

    damage(pg_url)
    restored = restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert restored.restored_from == path
    assert table_fingerprints(pg_url) == before
    assert not (env.backup_dir / name).exists()  # the downloaded copy is gone


def test_an_object_altered_in_the_store_is_refused_and_the_database_untouched(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    env = make_env(pg_url, backup={"storage": bucket})
    seed(env, rows=50)
    info = take_backup(env, "0007")
    key = info.path.split("/", 3)[3]
    stored = client(bucket).get_object(Bucket=bucket["bucket"], Key=key)["Body"].read()
    altered = stored[:-10] + bytes(b ^ 0xFF for b in stored[-10:])
    tagging = client(bucket).get_object_tagging(Bucket=bucket["bucket"], Key=key)
    client(bucket).put_object(Bucket=bucket["bucket"], Key=key, Body=altered)
    client(bucket).put_object_tagging(  # the tags kept: only the content check can tell
        Bucket=bucket["bucket"], Key=key, Tagging={"TagSet": tagging["TagSet"]}
    )
    damage(pg_url)
    damaged = table_fingerprints(pg_url)
    with pytest.raises(BackupError, match="does not match its manifest's sha256"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert table_fingerprints(pg_url) == damaged
    assert not list(env.backup_dir.glob("*.dump"))


def test_an_upload_cut_off_halfway_leaves_nothing_and_the_migration_does_not_start(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    env = make_env(
        pg_url,
        backup={"storage": bucket, "required": True, "compression": 0, "timeout": 0.3},
    )
    run_migrations(env, DEFAULT_PROJECT, "0003")
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.begin() as connection:  # enough that the dump outlasts the timeout
        connection.execute(
            text(
                "CREATE TABLE bulk AS SELECT i, md5(i::text) || md5((i+1)::text) AS v "
                "FROM generate_series(1, 2000000) i"
            )
        )
    engine.dispose()
    with pytest.raises(BackupError, match="backup.timeout"):
        migrate(env, RunOptions(yes=True, skip_health_checks=True), DEFAULT_PROJECT, QUIET)
    assert read_current(env) == "0003"
    assert keys(bucket) == []
    uploads = client(bucket).list_multipart_uploads(Bucket=bucket["bucket"])
    assert uploads.get("Uploads", []) == []


def test_a_store_that_refuses_the_upload_while_pg_dump_runs_is_one_sentence_and_leaves_nothing(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str], tmp_path: Path
) -> None:
    """The upload is begun beside pg_dump's start; a bucket that does not exist fails
    it: the sentence names the store, pg_dump is stopped, nothing is left anywhere."""
    import subprocess

    missing = bucket | {"bucket": "no-such-bucket"}
    env = make_env(pg_url, backup={"storage": missing})
    seed(env, rows=20)
    with pytest.raises(BackupError, match=r"Storing the backup in s3://no-such-bucket/.* failed"):
        take_backup(env, "0007")
    assert keys(bucket) == []
    leftover = (
        [p for p in env.backup_dir.rglob("*") if p.is_file()] if env.backup_dir.exists() else []
    )
    assert leftover == []
    running = subprocess.run(["pgrep", "-f", "pg_dump"], capture_output=True, text=True)
    assert running.stdout.strip() == ""


def test_an_encrypted_object_hides_the_rows_and_restores_only_with_the_identity(
    pg_url: str,
    make_env: Callable[..., Environment],
    bucket: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = pyrage.x25519.Identity.generate()
    env = make_env(pg_url, backup={"storage": bucket, "encrypt_to": str(identity.to_public())})
    seed(env, rows=30)
    before = table_fingerprints(pg_url)
    info = take_backup(env, "0007")
    key = info.path.split("/", 3)[3]
    stored = client(bucket).get_object(Bucket=bucket["bucket"], Key=key)["Body"].read()
    assert key.endswith(".dump.age") and stored.startswith(b"age-encryption.org/v1")
    assert b"user7@example.org" not in stored and b"PGDMP" not in stored
    damage(pg_url)
    monkeypatch.delenv("SAFE_MIGRATIONS_AGE_IDENTITY", raising=False)
    with pytest.raises(ConfigError, match="SAFE_MIGRATIONS_AGE_IDENTITY"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    monkeypatch.setenv("SAFE_MIGRATIONS_AGE_IDENTITY", str(identity))
    restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert table_fingerprints(pg_url) == before


def test_retention_removes_only_old_remote_objects_of_its_own(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    env = make_env(pg_url, backup={"storage": bucket, "keep": 2})
    seed(env, rows=5)
    s3 = client(bucket)
    s3.put_object(Bucket=bucket["bucket"], Key="staging/notes.txt", Body=b"team notes")
    other = "staging/production-20260101T000000000Z-0007.dump"
    s3.put_object(Bucket=bucket["bucket"], Key=other, Body=b"another environment's")
    s3.put_object(Bucket=bucket["bucket"], Key="elsewhere/staging.dump", Body=b"outside")
    made = [take_backup(env, "0007").path for _ in range(3)]
    left = keys(bucket)
    for path in made[1:]:
        assert path.split("/", 3)[3] in left
    assert made[0].split("/", 3)[3] not in left
    assert made[0].split("/", 3)[3] + ".manifest.json" not in left
    assert {"staging/notes.txt", other, "elsewhere/staging.dump"} <= set(left)


def test_the_store_lists_every_backup_of_its_own_newest_first(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    """Manifests are read several at a time: the listing still holds each of the
    environment's own once, newest first, and skips another environment's and a
    manifest that is not JSON."""
    env = make_env(pg_url, backup={"storage": bucket})
    s3 = client(bucket)
    days = [17, 3, 28, 9, 21, 14, 1, 25, 6, 11, 30, 19]
    for day in days:
        name = f"staging-202601{day:02d}T000000000Z-0007.dump"
        manifest = {"environment": "staging", "created_at": f"2026-01-{day:02d}T00:00:00+00:00"}
        s3.put_object(
            Bucket=bucket["bucket"], Key=f"staging/{name}.manifest.json", Body=json.dumps(manifest)
        )
    foreign = {"environment": "production", "created_at": "2026-02-01T00:00:00+00:00"}
    s3.put_object(
        Bucket=bucket["bucket"],
        Key="staging/staging-20260201T000000000Z-0007.dump.manifest.json",
        Body=json.dumps(foreign),
    )
    s3.put_object(
        Bucket=bucket["bucket"],
        Key="staging/staging-20260202T000000000Z-0007.dump.manifest.json",
        Body=b"{not json",
    )
    listed = all_backups(env)
    assert [d["name"] for d in listed] == [
        f"staging-202601{day:02d}T000000000Z-0007.dump" for day in sorted(days, reverse=True)
    ]
    assert (
        listed[0]["path"]
        == f"s3://{bucket['bucket']}/staging/staging-20260130T000000000Z-0007.dump"
    )


def test_no_credential_or_password_in_output_reports_manifests_or_tags(
    pg_url: str, tmp_path: Path, bucket: dict[str, str]
) -> None:
    env = cli_env(tmp_path, pg_url, backup={"storage": bucket})
    env |= {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    seed_env = env | {"DATABASE_URL": pg_url}
    run = run_invoke("migrate", "--env", "staging", "--yes", "--backup", env=seed_env)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = run_invoke("backups", "--env", "staging", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert len(found) == 1 and found[0]["path"].startswith("s3://")
    secrets = [PASSWORD, "canary-aws-secret-do-not-print"]
    texts = [run.stdout, run.stderr, listed.stdout, listed.stderr]
    texts += [p.read_text() for p in (tmp_path / "var").rglob("*") if p.is_file()]
    s3 = client(bucket)
    for key in keys(bucket):
        texts.append(
            s3.get_object(Bucket=bucket["bucket"], Key=key)["Body"].read().decode("latin-1")
        )
        texts.append(json.dumps(s3.get_object_tagging(Bucket=bucket["bucket"], Key=key)))
    for secret in secrets:
        assert all(secret not in t for t in texts), secret


def test_health_names_missing_credentials_and_an_unreachable_store(
    pg_url: str,
    make_env: Callable[..., Environment],
    bucket: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = make_env(pg_url, backup={"storage": bucket})
    checks = {r.name: r for r in run_health(env, DEFAULT_PROJECT, "head")}
    assert checks["backup_store"].ok, checks["backup_store"].message
    assert keys(bucket) == []  # the probe object was removed
    gone = make_env(pg_url, backup={"storage": bucket | {"bucket": "no-such-bucket-here"}})
    checks = {r.name: r for r in run_health(gone, DEFAULT_PROJECT, "head")}
    assert not checks["backup_store"].ok and "no-such-bucket-here" in checks["backup_store"].message
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    checks = {r.name: r for r in run_health(env, DEFAULT_PROJECT, "head")}
    assert not checks["backup_store"].ok
    assert "no AWS credentials were found" in checks["backup_store"].message


def test_directory_format_with_s3_is_one_sentence(
    make_env: Callable[..., Environment], sqlite_url: str, bucket: dict[str, str]
) -> None:
    with pytest.raises(ConfigError, match="stays on local disk"):
        make_env(sqlite_url, backup={"storage": bucket, "format": "directory"})


def test_rollback_restore_takes_the_newest_runs_backup_from_the_store(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    env = make_env(
        pg_url,
        backup={"storage": bucket, "required": True},
        policy={"auto_rollback": True},
    )
    run_migrations(env, DEFAULT_PROJECT, "0006")
    before = table_fingerprints(pg_url)
    record = migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    assert record.backup["path"].startswith("s3://") and read_current(env) == "0007"
    undone = rollback(env, from_backup=True, yes=True, interactive=False, console=QUIET)
    assert undone is not None and undone.restored_from == record.backup["path"]
    assert read_current(env) == "0006" and table_fingerprints(pg_url) == before


def test_a_run_that_takes_no_backup_is_not_blocked_by_the_store(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    gone = bucket | {"bucket": "no-such-bucket-here"}
    env = make_env(pg_url, backup={"storage": gone})
    record = migrate(env, RunOptions(yes=True, backup=False), DEFAULT_PROJECT, QUIET)
    assert record.success and read_current(env) == "0007"
    assert "backup_store" not in {c["name"] for c in record.health}
    with pytest.raises(BlockedError, match="backup_store"):
        migrate(env, RunOptions(yes=True, backup=True, revision="0007"), DEFAULT_PROJECT, QUIET)


def test_a_manifest_that_cannot_be_written_leaves_no_unlisted_dump_and_says_so(
    pg_url: str,
    make_env: Callable[..., Environment],
    bucket: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore.exceptions import ClientError

    from safe_migrations.stores.s3bucket import Store

    env = make_env(pg_url, backup={"storage": bucket})
    seed(env, rows=5)

    def refused(*_args: object, **_kwargs: object) -> None:  # the store refuses this one PUT
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "PutObject")

    monkeypatch.setattr(Store, "put_json", refused)
    with pytest.raises(BackupError, match="writing its manifest failed") as failed:
        take_backup(env, "0007")
    assert "the dump was deleted again, so nothing was left" in failed.value.message
    assert keys(bucket) == []


def test_an_upload_left_open_by_a_killed_run_is_aborted_by_the_next_backup(
    pg_url: str, tmp_path: Path, bucket: dict[str, str]
) -> None:
    """SIGKILL while pg_dump streams: the multipart upload stays open (nothing aborts
    it); the next backup, once it is older than backup.timeout, aborts it."""
    import signal
    import time

    from helpers import HangingTool, start_invoke

    env = cli_env(
        tmp_path, pg_url, policy={"confirm": "never"}, backup={"storage": bucket, "timeout": 1}
    )
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    s3 = client(bucket)
    theirs = "staging/notes-upload.bin"  # not a name this tool gives: never touched
    s3.create_multipart_upload(Bucket=bucket["bucket"], Key=theirs)
    hanging = HangingTool(tmp_path / "spybin", "pg_dump")
    runner = start_invoke("backup", "--env", "staging", env=env | {"PATH": hanging.path()})
    mine: list[str] = []
    try:  # the upload is begun beside pg_dump's start: killed once both are under way
        assert hanging.wait_until_hung()
        deadline = time.monotonic() + 30
        while not mine and time.monotonic() < deadline:
            uploads = s3.list_multipart_uploads(Bucket=bucket["bucket"]).get("Uploads", [])
            mine = [u["Key"] for u in uploads if u["Key"] != theirs]
            time.sleep(0.05)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=30)
        hanging.release()
    assert len(mine) == 1 and mine[0].startswith("staging/staging-")
    time.sleep(1.5)  # older than backup.timeout: no live run can still be writing it
    again = run_invoke("backup", "--env", "staging", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    left = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket["bucket"]).get("Uploads", [])]
    assert left == [theirs]


def test_a_dump_and_manifest_put_in_the_store_by_someone_else_are_not_restored(
    pg_url: str, make_env: Callable[..., Environment], bucket: dict[str, str]
) -> None:
    """A forged dump with a forged manifest that matches it: the sha256 tag (missing, or
    forged too) and the manifest copy this tool kept locally give it away."""
    env = make_env(pg_url, backup={"storage": bucket})
    seed(env, rows=20)
    real = take_backup(env, "0007")
    name = real.path.rsplit("/", 1)[1]
    s3 = client(bucket)
    forged = b"PGDMP forged dump"
    digest = hashlib.sha256(forged).hexdigest()
    manifest = json.loads(
        s3.get_object(Bucket=bucket["bucket"], Key=f"staging/{name}.manifest.json")["Body"].read()
    )
    s3.put_object(Bucket=bucket["bucket"], Key=f"staging/{name}", Body=forged)
    s3.put_object(
        Bucket=bucket["bucket"],
        Key=f"staging/{name}.manifest.json",
        Body=json.dumps(manifest | {"sha256": digest, "size": len(forged)}).encode(),
    )
    before = table_fingerprints(pg_url)
    with pytest.raises(BackupError, match="sha256 tag"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    s3.put_object_tagging(
        Bucket=bucket["bucket"],
        Key=f"staging/{name}",
        Tagging={"TagSet": [{"Key": "sha256", "Value": digest}]},
    )
    with pytest.raises(BackupError, match="the copy this tool kept"):
        restore(env, "latest", yes=True, interactive=False, console=QUIET)
    assert table_fingerprints(pg_url) == before


def test_pruning_or_a_full_local_folder_after_the_dump_is_stored_only_warns(
    pg_url: str,
    make_env: Callable[..., Environment],
    bucket: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The backup is stored and verified: a failed listing at pruning time or no space for
    the local manifest copy is a warning, and the migration goes on."""
    import errno

    from botocore.exceptions import ClientError

    from safe_migrations.stores import s3 as backup_module
    from safe_migrations.stores.s3bucket import Store

    env = make_env(pg_url, backup={"storage": bucket, "required": True})

    def no_listing(*_args: object, **_kwargs: object) -> list[str]:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "ListObjectsV2")

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Store, "names", no_listing)
    monkeypatch.setattr(backup_module, "write_manifest", disk_full)
    record = migrate(env, RunOptions(yes=True), DEFAULT_PROJECT, QUIET)
    assert record.success and read_current(env) == "0007"
    err = capsys.readouterr().err
    assert "pruning the older ones" in err and "ListObjectsV2" in err
    assert "No space left on device" in err and "Traceback" not in err
    stored = record.backup["path"].split("/", 3)[3]
    assert stored in keys(bucket) and stored + ".manifest.json" in keys(bucket)


def test_a_restore_from_the_store_killed_midway_does_not_block_the_next_restore(
    pg_url: str, tmp_path: Path, bucket: dict[str, str]
) -> None:
    """SIGKILL while pg_restore replays the downloaded object: the download stays in the
    backup folder, and the next restore sweeps it instead of finding it in the way."""
    from helpers import HangingTool

    env = cli_env(tmp_path, pg_url, policy={"confirm": "never"}, backup={"storage": bucket})
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    assert run_invoke("backup", "--env", "staging", env=env).returncode == 0
    hanging = HangingTool(tmp_path / "spybin", "pg_restore")
    hanging.kill_runner_at_it("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    backups = tmp_path / "var" / "backups"
    assert list(backups.glob("staging-*.dump"))  # the download, left by the killed run
    again = run_invoke("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not list(backups.glob("staging-*.dump")) and not list(backups.glob(".*.inuse"))
