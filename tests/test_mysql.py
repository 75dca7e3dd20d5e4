"""MySQL and MariaDB, on a real MariaDB server (a throwaway one unless TEST_MYSQL_URL):
the example schema both ways, one migration at a time, metadata-lock waits retried,
a partly applied revision reported and blocking until resolved, backup and restore,
and a password with shell metacharacters that appears nowhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import HangingTool, ScratchProject, cli_env, run_invoke
from pgcluster import PASSWORD
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import load_environment


def engine(url: str):  # noqa: ANN201 - a test helper
    return create_engine(url, poolclass=NullPool)


def version(url: str) -> str | None:
    with engine(url).connect() as connection:
        tables = {r[0] for r in connection.execute(text("SHOW TABLES"))}
        if "alembic_version" not in tables:
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def tables(url: str) -> set[str]:
    with engine(url).connect() as connection:
        return {r[0] for r in connection.execute(text("SHOW TABLES"))}


def reports(tmp_path: Path) -> list[dict]:
    folder = tmp_path / "var" / "reports"
    found = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(found, key=lambda r: r["started_at"])


def scratch_env(tmp_path: Path, url: str, scratch: ScratchProject, **sections: object) -> dict:
    return cli_env(
        tmp_path,
        url,
        policy={"confirm": "never"},
        alembic={"script_location": str(scratch.folder)},
        **sections,
    )


def test_the_example_schema_migrates_up_down_to_base_and_up_again(
    mysql_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    up = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    assert version(mysql_url) == "0007"
    assert "schema matches the models" in up.stdout
    down = run_invoke("downgrade", "--env", "staging", "--revision", "base", "--no-backup", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert version(mysql_url) is None
    # the tool's own journal table stays, as the version table does
    assert tables(mysql_url) == {"alembic_version", "safe_migrations_partial"}
    again = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert version(mysql_url) == "0007"
    assert {"users", "orders", "products", "order_items"} <= tables(mysql_url)


def test_two_runs_at_once_apply_once_and_the_second_names_the_holder(
    mysql_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add(
        """
        op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("SELECT SLEEP(4)")
        """
    )
    env = scratch_env(tmp_path, mysql_url, scratch, migration={"lock_wait": 1})
    first: dict[str, subprocess.CompletedProcess[str]] = {}
    runner = threading.Thread(
        target=lambda: first.setdefault(
            "run", run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
        )
    )
    runner.start()
    time.sleep(2)  # the first holds the lock and sleeps inside its revision
    second = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    runner.join()
    assert first["run"].returncode == 0, first["run"].stderr
    assert second.returncode == 4, second.stdout + second.stderr
    assert "Another migration holds the lock" in second.stderr
    assert "connection " in second.stderr and "user tester" in second.stderr
    applied = sum(len(r["applied"]) for r in reports(tmp_path))
    assert applied == 1
    assert version(mysql_url) == "r001"


def test_a_metadata_lock_wait_gives_up_retries_and_succeeds_once_the_holder_commits(
    mysql_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add('op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.add_column("items", sa.Column("note", sa.String(20)))')
    env = scratch_env(
        tmp_path, mysql_url, scratch, migration={"lock_timeout": 1, "lock_budget": 20}
    )
    assert (
        run_invoke(
            "migrate", "--env", "staging", "--revision", "r001", "--no-backup", env=env
        ).returncode
        == 0
    )
    holder = engine(mysql_url).connect()
    holder.execute(text("SELECT * FROM items"))  # an open transaction: a metadata lock on items
    released = threading.Timer(5, holder.commit)
    released.start()
    started = time.monotonic()
    result = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    elapsed = time.monotonic() - started
    released.join()
    holder.close()
    assert result.returncode == 0, result.stdout + result.stderr
    report = reports(tmp_path)[-1]
    assert report["applied"][0]["revision"] == "r002"
    retries = report["retries"]
    assert report["applied"][0]["retries"] == len(retries) >= 1
    assert "1205" in retries[0]["error"] and "Lock wait timeout" in retries[0]["error"]
    assert retries[0]["holders"][0]["role"] == "tester"  # the open transaction, named
    assert elapsed < 5 + 4  # retried within a second of the holder's commit, not at the budget
    assert version(mysql_url) == "r002"


def test_a_revision_failing_after_its_first_ddl_is_partly_applied_and_blocks_until_resolved(
    mysql_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add('op.create_table("base_table", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add(
        """
        op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
        op.execute("ALTER TABLE no_such_table ADD COLUMN x INT")
        """,
        message="half done",
    )
    env = scratch_env(tmp_path, mysql_url, scratch)
    failed = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert failed.returncode == 1
    assert "partly applied" in failed.stderr and "was rolled back" not in failed.stderr
    assert "CREATE TABLE half" in failed.stderr
    assert version(mysql_url) == "r001"  # the version table was not advanced
    assert "half" in tables(mysql_url)  # and MySQL kept what it had committed
    report = reports(tmp_path)[-1]
    partly = report["partly_applied"]
    assert partly["revision"] == "r002" and partly["version_table"] == "r001"
    assert partly["committed_statements"][0].startswith("CREATE TABLE half")
    assert "no_such_table" in partly["failed_statement"]
    markdown = Path(str(reports_path(tmp_path, report))).read_text()
    assert "partly applied" in markdown and "CREATE TABLE half" in markdown

    blocked = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert blocked.returncode == 3, blocked.stdout + blocked.stderr
    assert "revision r002 (upgrade) is partly applied: it failed" in blocked.stderr
    assert "CREATE TABLE half" in blocked.stderr and "invoke resolve" in blocked.stderr
    health = run_invoke("health", "--env", "staging", env=env)
    assert health.returncode == 3

    # The user finishes the revision by hand, then says so.
    with engine(mysql_url).begin() as connection:
        connection.execute(text("CREATE TABLE no_such_table (id INT PRIMARY KEY, x INT)"))
    unknown = run_invoke("resolve", "--env", "staging", "--revision", "zzz", "--applied", env=env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "Revision 'zzz' is not in the scripts" in unknown.stderr
    wrong = run_invoke("resolve", "--env", "staging", "--revision", "r001", "--applied", env=env)
    assert wrong.returncode == 2 and "on record: r002" in wrong.stderr
    resolved = run_invoke("resolve", "--env", "staging", "--revision", "r002", "--applied", env=env)
    assert resolved.returncode == 0, resolved.stderr
    assert version(mysql_url) == "r002"
    audit = [
        json.loads(line)
        for line in (tmp_path / "var" / "reports" / "audit.jsonl").read_text().splitlines()
    ]
    assert audit[-1]["operation"] == "resolve" and audit[-1]["resolution"] == "applied"
    assert audit[-1]["post_revision"] == "r002"
    assert run_invoke("health", "--env", "staging", env=env).returncode == 0
    assert "partly_applied" not in tables(mysql_url) - {"safe_migrations_partial"}


def reports_path(tmp_path: Path, report: dict) -> Path:
    folder = tmp_path / "var" / "reports"
    for path in folder.glob("*.json"):
        if json.loads(path.read_text())["started_at"] == report["started_at"]:
            return path.with_suffix(".md")
    raise AssertionError("no report file")


def checksum(url: str) -> dict[str, list]:
    with engine(url).connect() as connection:
        names = sorted(r[0] for r in connection.execute(text("SHOW TABLES")))
        return {
            name: [tuple(r) for r in connection.execute(text(f"SELECT * FROM `{name}` ORDER BY 1"))]
            for name in names
            if name != "safe_migrations_partial"
        }


@pytest.fixture
def spy_dump(tmp_path: Path) -> Path:
    """A PATH folder whose mariadb-dump records its argv and environment, then runs the real one."""
    folder = tmp_path / "spybin"
    folder.mkdir()
    for name in ("mariadb-dump", "mysqldump"):
        real = shutil.which(name)
        if real is None:
            continue
        script = folder / name
        script.write_text(
            "#!/bin/sh\n"
            f'cat /proc/$$/cmdline | tr "\\0" "\\n" >> "{folder}/cmdline"\n'
            f'env > "{folder}/env.$$"\n'
            f'exec "{real}" "$@"\n'
        )
        script.chmod(0o755)
    return folder


def test_backup_then_damage_then_restore_gives_identical_data_and_no_password_leaks(
    mysql_url: str, tmp_path: Path, spy_dump: Path
) -> None:
    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    env["PATH"] = f"{spy_dump}{os.pathsep}{os.environ['PATH']}"
    migrated = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert migrated.returncode == 0, migrated.stderr
    with engine(mysql_url).begin() as connection:
        for i in range(300):
            connection.execute(
                text("INSERT INTO users (email, name, status) VALUES (:e, :n, 'active')"),
                {"e": f"user{i}@example.com", "n": f"n{i}; DROP TABLE x; -- 'q' \"t\"\n\\ é"},
            )
        connection.execute(
            text("INSERT INTO orders (user_id, amount_cents) SELECT id, id * 7 FROM users")
        )
        connection.execute(
            text("INSERT INTO products (sku, name, price_cents) VALUES ('a', 'A', 5)")
        )
        connection.execute(
            text(
                "INSERT INTO order_items (order_id, product_id, quantity) "
                "SELECT o.id, p.id, 2 FROM orders o, products p"
            )
        )
    before = checksum(mysql_url)
    backup = run_invoke("backup", "--env", "staging", env=env)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    manifest = json.loads(next((tmp_path / "var" / "backups").glob("*.manifest.json")).read_text())
    assert manifest["format"] == "mysql" and manifest["path"].endswith(".sql.gz")
    assert manifest["tables"] >= 5 and len(manifest["sha256"]) == 64
    assert oct(Path(manifest["path"]).stat().st_mode)[-3:] == "600"

    with engine(mysql_url).begin() as connection:
        connection.execute(text("SET FOREIGN_KEY_CHECKS = 0"))
        connection.execute(text("DROP TABLE order_items"))
        connection.execute(text("DELETE FROM users WHERE id % 2 = 0"))
        connection.execute(text("CREATE TABLE stray (id INT PRIMARY KEY)"))
    restored = run_invoke("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert checksum(mysql_url) == before  # order_items back, rows back, stray gone
    assert not [name for name in _databases(mysql_url) if name.startswith("stairway_")]
    argv = (spy_dump / "cmdline").read_text()
    assert "--defaults-extra-file=" in argv and "--single-transaction" in argv
    environments = "".join(p.read_text() for p in spy_dump.glob("env.*"))
    assert "MYSQL_PWD" not in environments
    written = [
        p.read_text(errors="replace")
        for p in (tmp_path / "var").rglob("*")
        if p.is_file() and not p.name.endswith(".gz")
    ]
    for seen in [
        argv,
        environments,
        backup.stdout,
        backup.stderr,
        restored.stdout,
        restored.stderr,
        *written,
    ]:
        assert PASSWORD not in seen
        assert "w'rd" not in seen


def _databases(url: str) -> list[str]:
    with engine(url).connect() as connection:
        return [r[0] for r in connection.execute(text("SHOW DATABASES"))]


def test_a_damaged_dump_is_refused_and_the_database_is_untouched(
    mysql_url: str, tmp_path: Path
) -> None:
    import gzip

    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    assert run_invoke("backup", "--env", "staging", env=env).returncode == 0
    archive = next((tmp_path / "var" / "backups").glob("*.sql.gz"))
    lines = gzip.decompress(archive.read_bytes()).splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line.startswith(b"CREATE TABLE `users`"))
    forged = b"".join(lines[:cut]) + b"system rm -rf /tmp/nothing\n" + b"".join(lines[cut:])
    foreign = tmp_path / "forged.sql.gz"
    foreign.write_bytes(gzip.compress(forged))
    before = checksum(mysql_url)
    result = run_invoke(
        "restore", "--env", "staging", "--backup", str(foreign), "--foreign", "--yes", env=env
    )
    assert result.returncode != 0
    assert "client command" in result.stderr and "was not touched" in result.stderr
    assert checksum(mysql_url) == before
    assert not [name for name in _databases(mysql_url) if name.startswith("stairway_")]


def test_urls_status_and_support_sentences(mysql_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "environments"
    cli_env(tmp_path, mysql_url)
    plain = mysql_url.replace("mysql+pymysql://", "mysql://")
    loaded = load_environment("staging", {"DATABASE_URL": plain}, directory=directory)
    assert loaded.url.startswith("mysql+pymysql://") and loaded.is_mysql
    maria = load_environment(
        "staging", {"DATABASE_URL": plain.replace("mysql://", "mariadb://")}, directory=directory
    )
    assert maria.url.startswith("mariadb+pymysql://")
    env = cli_env(tmp_path, plain.replace("mysql://", "mysql+mysqldb://"))
    refused = run_invoke("status", "--env", "staging", env=env)
    assert refused.returncode == 2 and "go through PyMySQL" in refused.stderr
    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    dry = run_invoke("migrate", "--env", "staging", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "CREATE TABLE users" in dry.stdout and "ALTER TABLE orders CHANGE" in dry.stdout
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    status = run_invoke("status", "--env", "staging", "--json", env=env)
    assert json.loads(status.stdout)["current"] == "0007"


def test_lint_skips_squawk_with_a_sentence_and_warns_of_several_ddl_statements(
    mysql_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add('op.create_table("one", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add(
        """
        op.create_table("two", sa.Column("id", sa.Integer, primary_key=True))
        op.add_column("one", sa.Column("note", sa.String(20)))
        """
    )
    env = scratch_env(tmp_path, mysql_url, scratch)
    result = run_invoke("lint", "--env", "staging", "--all", env=env)
    assert result.returncode == 0, result.stdout + result.stderr  # warnings do not fail
    assert "squawk's rules are PostgreSQL's" in result.stdout
    assert "r001: clean" in result.stdout
    assert (
        "several-ddl-statements [warning]" in result.stdout and "2 DDL statements" in result.stdout
    )


def test_check_stairway_runs_every_revision_up_down_up_on_a_scratch_database(
    mysql_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    result = run_invoke("check", "--env", "staging", "--stairway", env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stairway" in result.stdout
    assert not [name for name in _databases(mysql_url) if name.startswith("stairway_")]


def test_rehearse_times_each_revision_on_a_copy_and_says_locks_are_not_sampled(
    mysql_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    assert (
        run_invoke(
            "migrate", "--env", "staging", "--revision", "0003", "--no-backup", env=env
        ).returncode
        == 0
    )
    result = run_invoke("rehearse", "--env", "staging", "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "var" / "reports" / "rehearsals"
    report = json.loads(next(folder.glob("*.json")).read_text())
    assert [r["revision"] for r in report["revisions"]] == ["0004", "0005", "0006", "0007"]
    assert {r["status"] for r in report["revisions"]} == {"timed"}
    assert "locks are not sampled" in report["lock_details"]
    assert report["copy"]["dropped"] is True
    assert version(mysql_url) == "0003"  # the database itself was not migrated
    assert not [n for n in _databases(mysql_url) if n.startswith("rehearsal_")]


def test_a_restore_stopped_midway_blocks_the_next_run_until_a_restore_completes(
    mysql_url: str, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    with engine(mysql_url).begin() as connection:
        connection.execute(text("INSERT INTO users (email, name) VALUES ('a@x', 'A')"))
    before = checksum(mysql_url)
    assert run_invoke("backup", "--env", "staging", env=env).returncode == 0
    holder = engine(mysql_url).connect()
    holder.execute(text("SELECT * FROM users"))  # an application's open transaction on users
    try:
        stopped = run_invoke("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    finally:
        holder.rollback()
        holder.close()
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "failed midway" in stopped.stderr and "the backup itself is intact" in stopped.stderr
    blocked = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert blocked.returncode == 3
    assert "stopped midway" in blocked.stderr and "invoke restore" in blocked.stderr
    again = run_invoke("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert checksum(mysql_url) == before
    assert run_invoke("health", "--env", "staging", env=env).returncode == 0


def test_a_dump_naming_another_database_is_refused_and_that_database_is_untouched(
    mysql_url: str, tmp_path: Path
) -> None:
    """Database-qualified statements would reach the real database from the scratch
    proof: the whole dump is refused before any of them runs, and the sentence is true.
    A dump with a view, a trigger, a procedure and an event restores as before."""
    import gzip

    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    with engine(mysql_url).begin() as connection:
        connection.execute(text("INSERT INTO products (sku, name, price_cents) VALUES ('a','A',5)"))
        connection.execute(
            text(
                "CREATE VIEW cheap AS SELECT p.sku, p.name FROM products p WHERE p.price_cents < 9"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER stamp BEFORE INSERT ON products FOR EACH ROW "
                "SET NEW.name = CONCAT(NEW.name, '')"
            )
        )
        connection.execute(
            text("CREATE PROCEDURE total() SELECT COUNT(*) FROM products, users u WHERE u.id > 0")
        )
        connection.execute(
            text("CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM products")
        )
    assert run_invoke("backup", "--env", "staging", env=env).returncode == 0
    archive = next((tmp_path / "var" / "backups").glob("*.sql.gz"))
    with engine(mysql_url).begin() as connection:
        connection.execute(text("DROP VIEW cheap"))
    restored = run_invoke("restore", "--env", "staging", "--backup", "latest", "--yes", env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "cheap" in tables(mysql_url)

    database = mysql_url.rsplit("/", 1)[1].split("?")[0]
    lines = gzip.decompress(archive.read_bytes()).splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if line.startswith(b"CREATE TABLE `users`"))
    hostile = (
        f"CREATE TABLE `{database}`.`planted` (id INT);\n"
        f"/*!40000 DROP TABLE IF EXISTS `{database}`.`order_items` */;\n"
    ).encode()
    forged = tmp_path / "forged.sql.gz"
    forged.write_bytes(gzip.compress(b"".join(lines[:cut]) + hostile + b"".join(lines[cut:])))
    before = checksum(mysql_url)
    result = run_invoke(
        "restore", "--env", "staging", "--backup", str(forged), "--foreign", "--yes", env=env
    )
    assert result.returncode != 0
    assert f"naming the database `{database}`" in result.stderr
    assert "was not touched" in result.stderr
    assert checksum(mysql_url) == before
    assert "planted" not in tables(mysql_url) and "order_items" in tables(mysql_url)
    assert not [name for name in _databases(mysql_url) if name.startswith("stairway_")]


def _statement_running(url: str, like: str, wanted: bool, within: float = 30) -> bool:
    """Wait until a statement matching ``like`` is (or is no longer) on the processlist."""
    deadline = time.monotonic() + within
    with engine(url).connect() as watch:
        while time.monotonic() < deadline:
            running = watch.execute(
                text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE :p"),
                {"p": like},
            ).scalar()
            if bool(running) == wanted:
                return True
            time.sleep(0.1)
    return False


# A statement the server goes on executing after its client died (CPU-bound: SLEEP()
# and lock waits end early when their client is gone or their lock is wanted).
LONG_CTAS = (
    "CREATE TABLE slow AS SELECT COUNT(*) AS n "
    "FROM seq_1_to_12000 a, seq_1_to_12000 b WHERE a.seq + b.seq > 3"
)


def test_a_killed_runners_statement_still_running_blocks_the_next_run_then_is_partly_applied(
    mysql_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    """SIGKILL frees the lock connection at once while the server goes on executing the
    killed runner's DDL: the next runner must not start the same revision beside it, and
    once that statement has ended the revision it left behind is partly applied."""
    import signal

    from helpers import ROOT

    scratch.add(f'op.execute("{LONG_CTAS}")')
    env = scratch_env(tmp_path, mysql_url, scratch, migration={"lock_wait": 1})
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "invoke"), "migrate", "--env", "staging", "--no-backup"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert _statement_running(mysql_url, "CREATE TABLE slow%", True), "it never started"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)

    second = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert second.returncode == 3, second.stdout + second.stderr  # health blocks
    assert "still executing" in second.stderr and "rolled back" not in second.stderr
    assert version(mysql_url) is None
    # Past health (skipped), the lock step itself waits for it, then gives up.
    forced = run_invoke(
        "migrate", "--env", "staging", "--no-backup", "--skip-health-checks", env=env
    )
    assert forced.returncode == 4, forced.stdout + forced.stderr
    assert "still executing" in forced.stderr and version(mysql_url) is None

    # The killed runner's statement ends on its own, and MySQL commits it.
    assert _statement_running(mysql_url, "CREATE TABLE slow%", False, within=60)
    third = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert third.returncode == 1, third.stdout + third.stderr
    assert "partly applied" in third.stderr and "rolled back" not in third.stderr
    assert "already there" in third.stderr
    assert reports(tmp_path)[-1]["partly_applied"]["revision"] == "r001"
    assert run_invoke("health", "--env", "staging", env=env).returncode == 3


def test_a_backup_killed_mid_dump_leaves_no_password_on_disk_and_the_next_run_removes_its_partial(
    mysql_url: str, tmp_path: Path
) -> None:
    """SIGKILL runs no cleanup: the dump's options reach it through a pipe, so no file
    ever held the password, and the half-written archive (no manifest) is swept by the
    next run that uses the backup folder."""

    env = cli_env(tmp_path, mysql_url, policy={"confirm": "never"})
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 0
    hanging = HangingTool(tmp_path / "spybin", "mariadb-dump", "mysqldump")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env["TMPDIR"] = str(temporary)
    hanging.kill_runner_at_it("backup", "--env", "staging", env=env)

    backups = tmp_path / "var" / "backups"
    partial = list(backups.glob("*.sql.gz"))
    assert len(partial) == 1 and not list(backups.glob("*.manifest.json"))
    for path in [*tmp_path.rglob("*"), *Path("/tmp").glob("safe-migrations-*/*")]:
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            assert b"w'rd" not in content and b"p@ss" not in content, path

    again = run_invoke("backup", "--env", "staging", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    archives = list(backups.glob("*.sql.gz"))
    assert partial[0] not in archives and len(archives) == 1
    assert len(list(backups.glob("*.manifest.json"))) == 1
    assert not list(backups.glob(".*.inuse"))


def test_a_role_without_the_process_privilege_gets_a_warning_naming_the_grant_not_a_failure(
    mysql_url: str, mysql_admin: str, tmp_path: Path
) -> None:
    """innodb_trx needs the global PROCESS privilege, which a migration role often lacks:
    health warns and names the grant, and the migration (its lock-timeout retry too) runs."""
    import uuid

    from sqlalchemy.engine import make_url

    database = make_url(mysql_url).database
    user = f"noproc_{uuid.uuid4().hex[:8]}"
    with engine(mysql_admin).begin() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'"))
        connection.execute(text(f"GRANT ALL PRIVILEGES ON `{database}`.* TO '{user}'@'%'"))
    try:
        url = make_url(mysql_url).set(username=user, password=f"pw-{user}")
        role = url.render_as_string(hide_password=False)
        with engine(role).connect() as connection, pytest.raises(Exception, match="PROCESS"):
            connection.execute(text("SELECT * FROM information_schema.innodb_trx"))
        env = cli_env(tmp_path, role, policy={"confirm": "never"})
        health = run_invoke("health", "--env", "staging", env=env)
        assert health.returncode == 0, health.stdout + health.stderr
        assert "lacks the PROCESS privilege" in health.stdout and "GRANT PROCESS" in health.stdout
        migrated = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert version(mysql_url) == "0007"
    finally:
        with engine(mysql_admin).begin() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))


def test_sessions_without_tls_options_share_one_tls_context_and_others_build_their_own(
    mysql_url: str,
) -> None:
    """PyMySQL's PREFERRED mode built a TLS context (the system CA store read) for every
    connection; a run's sessions now share one, and a URL naming TLS options keeps its
    own context as PyMySQL builds it."""
    from pymysql.connections import Connection

    from safe_migrations.engines.mysqlsession import share_preferred_tls_context

    share_preferred_tls_context()
    share_preferred_tls_context()  # once per process, however many engines ask
    first, second = (Connection(host="127.0.0.1", defer_connect=True) for _ in range(2))
    assert first.ctx is second.ctx and first.ssl and not first._ssl_required
    import ssl

    ca = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    named = Connection(host="127.0.0.1", defer_connect=True, ssl_ca=ca)
    assert named.ctx is not first.ctx and named._ssl_required
    with engine(mysql_url).connect() as one, engine(mysql_url).connect() as other:
        assert one.connection.dbapi_connection.ctx is other.connection.dbapi_connection.ctx
        assert one.execute(text("SELECT 1")).scalar() == 1


def test_a_rehearsal_an_account_may_not_create_databases_for_names_the_mysql_grant(
    mysql_url: str, mysql_admin: str, tmp_path: Path
) -> None:
    """Not PostgreSQL's CREATEDB: the sentence names the grant MySQL and MariaDB read."""
    import uuid

    from sqlalchemy.engine import make_url

    user = f"u{uuid.uuid4().hex[:10]}"
    database = make_url(mysql_url).database
    with engine(mysql_admin).begin() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'"))
        connection.execute(text(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'"))
    limited = make_url(mysql_url).set(username=user, password=f"pw-{user}")
    env = cli_env(tmp_path, limited.render_as_string(hide_password=False))
    try:
        result = run_invoke("rehearse", "--env", "staging", env=env, timeout=300)
    finally:
        with engine(mysql_admin).begin() as connection:
            connection.execute(text(f"DROP USER '{user}'@'%'"))
    assert result.returncode != 0
    said = " ".join(result.stderr.split())
    assert "GRANT ALL ON `rehearsal\\_%`.*" in said, said
    assert "CREATEDB" not in said and "Traceback" not in said


@pytest.mark.parametrize("damage", ["not json {", '{"a": 1}', "[1, 2]"])
def test_a_damaged_journal_record_is_one_sentence_and_resolve_still_works(
    damage: str, mysql_url: str, tmp_path: Path, scratch: ScratchProject
) -> None:
    scratch.add('op.create_table("base_table", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add(
        'op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))\n'
        'op.execute("ALTER TABLE no_such_table ADD COLUMN x INT")'
    )
    env = scratch_env(tmp_path, mysql_url, scratch)
    assert run_invoke("migrate", "--env", "staging", "--no-backup", env=env).returncode == 1
    with engine(mysql_url).begin() as connection:
        connection.execute(
            text("UPDATE safe_migrations_partial SET statements = :s"), {"s": damage}
        )
    for argv, code in (
        (("health",), 3),
        (("migrate", "--no-backup"), 3),
        (("migrate", "--no-backup", "--resume"), 3),
    ):
        said = run_invoke(*argv, "--env", "staging", env=env)
        assert said.returncode == code, (argv, said.stdout + said.stderr)
        shown = said.stdout + said.stderr
        assert "Traceback" not in shown and "damaged" in shown, (argv, shown)
    with engine(mysql_url).begin() as connection:
        connection.execute(text("DROP TABLE half"))
    resolved = run_invoke(
        "resolve", "--env", "staging", "--revision", "r002", "--reverted", env=env
    )
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    assert run_invoke("health", "--env", "staging", env=env).returncode == 0
