"""pt-online-schema-change for an ALTER TABLE the server can only copy
(``migration.online_tool: pt-osc``).

pt-osc builds a copy of the table with the change, keeps it in step with triggers
while it copies rows in small chunks (each waiting at most a second for its locks), then
swaps the two with one atomic RENAME. Until the swap the original table is untouched, so
a run that fails or is killed midway changes nothing but leaves its helpers: the copy
(named ``_sm_osc_<table>`` here, so that only ours are ever recognised) and three
``pt_osc_*`` triggers that write into it. They are dropped when the run fails, and by
the next run when it was killed. The password reaches pt-osc in an option file of mode
0600, claimed like any file a run writes for a while (core/leftovers.py) and removed
when it ends: never in argv, never in an environment variable.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.errors import ToolError

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment

HELPER_PREFIX = "_sm_osc_"
PROGRAM = "pt-online-schema-change"
_LOAD = re.compile(r"^[A-Za-z_]+=\d+(,[A-Za-z_]+=\d+)*$")
_TABLE = re.compile(r"ALTER\s+TABLE\s+(`(?:[^`]|``)+`|\w+)\s+(.*)$", re.I | re.S)


class OnlineToolError(ToolError):
    """pt-online-schema-change failed; the table is as it was."""


def split_alter(sql: str) -> tuple[str, str]:
    """(table, the alter specification) of ``ALTER TABLE t <spec>`` as Alembic compiled it."""
    found = _TABLE.match(sql.strip())
    if found is None:
        raise OnlineToolError(f"cannot hand `{sql}` to {PROGRAM}: not an ALTER TABLE")
    table = found.group(1)
    if table.startswith("`"):
        table = table[1:-1].replace("``", "`")
    return table, found.group(2).strip()


def program() -> str:
    found = shutil.which(PROGRAM)
    if found is None:
        raise OnlineToolError(
            f"migration.online_tool is pt-osc but {PROGRAM} is not installed; install "
            "Percona Toolkit (Debian: apt-get install percona-toolkit)."
        )
    return found


@contextlib.contextmanager
def _option_file(env: Environment) -> Iterator[Path]:
    """The [client] section in a 0600 file of the backup folder, claimed while it lives."""
    from safe_migrations.core.files import private_folder
    from safe_migrations.core.leftovers import claimed, sweep
    from safe_migrations.engines.mysqldump import option_lines

    folder = private_folder(env.backup_dir)  # made 0700: the file holds the password
    sweep(folder)  # a killed run's option file (and anything else it claimed) goes first
    path = folder / f".pt-osc-{os.getpid()}-{time.monotonic_ns()}.cnf"
    with claimed(path):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(option_lines(env.url))
            yield path
        finally:
            path.unlink(missing_ok=True)


def run_pt_osc(env: Environment, table: str, spec: str) -> float:
    """Run the change through pt-osc; its duration in seconds. OnlineToolError when it
    fails, after its helpers were dropped; on an interrupt it is stopped the same way."""
    from sqlalchemy.engine import make_url

    settings = env.settings.migration
    for name in ("online_tool_max_load", "online_tool_critical_load"):
        if not _LOAD.match(getattr(settings, name)):
            raise OnlineToolError(
                f"migration.{name} must look like Threads_running=25 (STATUS=NUMBER, "
                f"comma-separated), not {getattr(settings, name)!r}."
            )
    database = make_url(env.url).database
    began = time.monotonic()
    with _option_file(env) as options:
        argv = [
            program(),
            f"--defaults-file={options}",  # pt tools read it first
            f"--alter={spec}",
            f"--new-table-name={HELPER_PREFIX}%T",
            f"--max-load={settings.online_tool_max_load}",
            f"--critical-load={settings.online_tool_critical_load}",
            "--progress=time,5",
            "--execute",
            f"D={database},t={table}",
        ]
        code, lines = _run(argv, env)
    if code != 0:
        cleaned = drop_helpers(env)
        detail = next(
            (line for line in reversed(lines) if "rror" in line or "failed" in line.lower()),
            lines[-1] if lines else f"exit code {code}",
        )
        raise OnlineToolError(
            f"{PROGRAM} failed on {table} ({detail.strip()}); the table is as it was"
            + (f", and its helpers were dropped: {', '.join(cleaned)}." if cleaned else ".")
        )
    return time.monotonic() - began


def _run(argv: list[str], env: Environment) -> tuple[int, list[str]]:
    """pt-osc's exit code and output lines, its progress shown on a terminal; stopped
    (and its helpers dropped) when this run is interrupted."""
    quiet = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL")}
    process = subprocess.Popen(
        argv,
        env=quiet,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip())
            if sys.stderr.isatty() and ("Copying" in line or "remain" in line):
                print(f"  pt-osc: {line.strip()}", file=sys.stderr)
        code = process.wait()
    except BaseException:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()
        cleaned = drop_helpers(env)
        raise _interrupted(cleaned) from None
    return code, lines


def _interrupted(cleaned: list[str]) -> BaseException:
    note = f"; its helpers were dropped: {', '.join(cleaned)}" if cleaned else ""
    return KeyboardInterrupt(f"{PROGRAM} was stopped before its swap{note}")


def drop_helpers(env: Environment) -> list[str]:
    """Drop what a pt-osc run of ours left: its ``_sm_osc_*`` tables and the ``pt_osc_*``
    triggers that write into them. Names what it dropped."""
    from sqlalchemy import text

    from safe_migrations.core.database import connect

    dropped: list[str] = []
    with connect(env, role="migrate", autocommit=True) as connection:
        triggers = connection.execute(
            text(
                "SELECT trigger_name FROM information_schema.triggers "
                "WHERE trigger_schema = DATABASE() AND trigger_name LIKE 'pt\\_osc\\_%' "
                "AND action_statement LIKE :helper"
            ),
            {"helper": f"%{HELPER_PREFIX}%"},
        ).scalars()
        for name in list(triggers):
            connection.execute(text(f"DROP TRIGGER IF EXISTS {_quoted(name)}"))
            dropped.append(f"trigger {name}")
        tables = connection.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name LIKE :prefix"
            ),
            {"prefix": HELPER_PREFIX.replace("_", "\\_") + "%"},
        ).scalars()
        for name in list(tables):
            connection.execute(text(f"DROP TABLE IF EXISTS {_quoted(name)}"))
            dropped.append(f"table {name}")
    return dropped


def _quoted(name: Any) -> str:
    return "`" + str(name).replace("`", "``") + "`"
