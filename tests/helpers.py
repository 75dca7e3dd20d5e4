"""What the tests share: the CLI as a user types it, scratch Alembic projects, environment
files, quiet consoles, and a few reads of a database's state. Fixtures are in conftest.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from safe_migrations.core.config import Environment
from safe_migrations.pipeline.context import Console, RunOptions
from safe_migrations.pipeline.upgrade import run_migrations
from safe_migrations.project.alembic_api import DEFAULT_PROJECT, Project

ROOT = Path(__file__).resolve().parent.parent
QUIET = Console(say=lambda _text: None, ask=lambda _prompt: "no", warn=lambda _text: None)
UNATTENDED = RunOptions(yes=True)


def cli_env(tmp_path: Path, url: str, name: str = "staging", **sections: Any) -> dict[str, str]:
    """An environment file under ``tmp_path`` and the variables that make the CLI use it."""
    write_environment(tmp_path / "environments", name, tmp_path / "var", **sections)
    return {"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"), "DATABASE_URL": url}


def write_environment(directory: Path, name: str, folder: Path, **sections: Any) -> None:
    """An environment file whose folders live under ``folder``."""
    data: dict[str, Any] = {
        "database": {"url": "${DATABASE_URL}", "connect_timeout": 5},
        "backup": {"folder": str(folder / "backups"), "keep": 3},
        "migration": {"lock_timeout": 1, "lock_budget": 3, "lock_wait": 5},
        "policy": {"confirm": "prompt"},
        "reports": {"folder": str(folder / "reports")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yml").write_text(yaml.safe_dump(data))


class ScratchProject:
    """A migrations folder of the test's own, with revisions written by the test."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "versions").mkdir(parents=True)
        shutil.copy(ROOT / "migrations" / "env.py", folder / "env.py")
        shutil.copy(ROOT / "migrations" / "script.py.mako", folder / "script.py.mako")
        self.count = 0
        self.last: str | None = None

    def project(self, metadata: Any = None) -> Project:
        return Project(script_location=self.folder, attributes=(("target_metadata", metadata),))

    def add(
        self,
        upgrade: str,
        downgrade: str = "pass",
        revision: str | None = None,
        message: str = "test revision",
    ) -> str:
        self.count += 1
        revision = revision or f"r{self.count:03d}"
        lines = [
            f'"""{message}"""',
            "import sqlalchemy as sa",
            "from alembic import op",
            "",
            f"revision = {revision!r}",
            f"down_revision = {self.last!r}",
            "branch_labels = None",
            "depends_on = None",
            "",
            "",
            "def upgrade():",
            textwrap.indent(textwrap.dedent(upgrade).strip(), "    "),
            "",
            "",
            "def downgrade():",
            textwrap.indent(textwrap.dedent(downgrade).strip(), "    "),
            "",
        ]
        path = self.folder / "versions" / f"{revision}.py"
        path.write_text("\n".join(lines))
        self.last = revision
        return revision


def run_invoke(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user types it, from the repository root."""
    invoke = shutil.which("invoke", path=str(Path(sys.executable).parent)) or "invoke"
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    full_env.update(env or {})
    return subprocess.run(
        [invoke, *args],
        cwd=ROOT,
        env=full_env,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_invoke(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The real CLI in the background, for a test that signals it midway."""
    invoke = shutil.which("invoke", path=str(Path(sys.executable).parent)) or "invoke"
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    return subprocess.Popen(
        [invoke, *args],
        cwd=ROOT,
        env=full_env | env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


class HangingTool:
    """A PATH folder whose ``names`` hang at their first call (until ``release``) and
    then run the real tool: a point to SIGKILL the runner at."""

    def __init__(self, folder: Path, *names: str) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.flag = folder / "hung"
        for name in names:
            real = shutil.which(name)
            if real is None:
                continue
            (folder / name).write_text(
                "#!/bin/sh\n"
                f'if [ ! -e "{self.flag}" ]; then echo $$ > "{self.flag}"; sleep 60; fi\n'
                f'exec "{real}" "$@"\n'
            )
            (folder / name).chmod(0o755)

    def path(self) -> str:
        return f"{self.folder}{os.pathsep}{os.environ['PATH']}"

    def wait_until_hung(self, within: float = 30) -> bool:
        deadline = time.monotonic() + within
        while not self.flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # the pid is written
        return self.flag.exists()

    def release(self) -> None:
        import signal

        with suppress(ProcessLookupError, ValueError):
            os.kill(int(self.flag.read_text()), signal.SIGKILL)

    def kill_runner_at_it(self, *args: str, env: dict[str, str]) -> None:
        """``invoke ARGS`` with this folder first on PATH, SIGKILLed once it hangs here."""
        import signal

        process = start_invoke(*args, env=env | {"PATH": self.path()})
        try:
            assert self.wait_until_hung(), f"{args[0]} never reached {self.folder.name}"
        finally:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            self.release()


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """An empty database on the admin URL's server, dropped afterwards."""
    import uuid

    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    mysql = admin_url.startswith(("mysql", "mariadb"))
    admin = create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            text(f"CREATE DATABASE `{name}`" if mysql else f'CREATE DATABASE "{name}"')
        )
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(
                text(
                    f"DROP DATABASE IF EXISTS `{name}`"
                    if mysql
                    else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                )
            )
        admin.dispose()


def table_names(url: str) -> set[str]:
    """The tables a database holds now, read on a connection of its own."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        names = set(inspect(connection).get_table_names())
    engine.dispose()
    return names


def seed(env: Environment, rows: int = 50) -> None:
    run_migrations(env, DEFAULT_PROJECT, "head")
    engine = create_engine(env.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, email, name) "
                "SELECT i, 'user' || i || '@example.org', md5(i::text) "
                f"FROM generate_series(1, {rows}) AS i"
            )
        )
        connection.execute(
            text("INSERT INTO orders (user_id, amount_cents) SELECT id, id * 100 FROM users")
        )
    engine.dispose()


def table_fingerprints(url: str) -> dict[str, tuple[int, str]]:
    """Row count and a checksum of every table's content."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        tables = (
            connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            .scalars()
            .all()
        )
        result = {}
        for table in tables:
            result[table] = connection.execute(
                text(
                    "SELECT count(*), "
                    "coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
                    f"FROM {table} t"
                )
            ).one()
    engine.dispose()
    return {k: tuple(v) for k, v in result.items()}


def hold_table_lock(url: str, table: str, seconds: float | None) -> threading.Event:
    """Another session takes ACCESS EXCLUSIVE on ``table``; commits after ``seconds``."""
    taken, release = threading.Event(), threading.Event()

    def blocker() -> None:
        engine = create_engine(url, poolclass=NullPool)
        with engine.connect() as connection:
            connection.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            taken.set()
            release.wait(seconds)
            connection.commit()
        engine.dispose()

    threading.Thread(target=blocker, daemon=True).start()
    assert taken.wait(10)
    return release


def read_in_open_transaction(
    url: str, table: str, seconds: float = 60
) -> tuple[threading.Event, list[str]]:
    """An application session reads ``table`` and keeps its transaction open (idle in
    transaction, holding ACCESS SHARE) until released or ``seconds`` pass; then it says
    whether it was still alive ("alive", or the error that ended it)."""
    taken, release, outcome = threading.Event(), threading.Event(), []

    def hold() -> None:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text(f"SELECT count(*) FROM {table}"))
                taken.set()
                release.wait(seconds)
                connection.execute(text("SELECT 1"))
                outcome.append("alive")
                connection.rollback()
        except Exception as exc:  # noqa: BLE001 - what ended it is the finding
            outcome.append(type(exc).__name__)
        finally:
            engine.dispose()

    threading.Thread(target=hold, daemon=True).start()
    assert taken.wait(10)
    return release, outcome
