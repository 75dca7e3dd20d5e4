"""Shared helpers for the benchmarks: a PostgreSQL to measure on, timing, and the printout.

Each script uses TEST_DATABASE_URL when set (a superuser URL), else starts the
same throwaway cluster the tests use (tests/pgcluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def arguments(description: str, **defaults: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="smallest size and one run (the smoke test uses it)"
    )
    parser.add_argument(
        "--runs", type=int, default=defaults.pop("runs", 5), help="runs of each side, alternating"
    )
    for name, value in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser.parse_args()


@contextmanager
def postgres() -> Iterator[str]:
    """A superuser URL (psycopg2 driver), shared with the tests' way of finding one."""
    from pgcluster import admin_url

    with admin_url(sys.exit) as url:
        yield url


@contextmanager
def mariadb() -> Iterator[str]:
    """An account that may create databases on a MariaDB: TEST_MYSQL_URL, else the tests'
    throwaway server."""
    from mariadbserver import mysql_admin_url

    with mysql_admin_url(sys.exit) as url:
        yield url


def is_mysql(url: str) -> bool:
    return url.startswith(("mysql", "mariadb"))


def _admin(url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


def create_database(admin_url: str, prefix: str = "bench") -> str:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = _admin(admin_url)
    with engine.connect() as connection:
        quoted = f"`{name}`" if is_mysql(admin_url) else f'"{name}"'
        connection.execute(text(f"CREATE DATABASE {quoted}"))
    engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    engine = _admin(admin_url)
    with engine.connect() as connection:
        name = make_url(url).database
        if is_mysql(admin_url):
            connection.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        else:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def libpq_env(url: str) -> dict[str, str]:
    """The child environment for pg_dump / pgbench / psql: credentials never in argv."""
    from safe_migrations.engines.libpq import pg_environment

    return pg_environment(url)


def timed_run(
    argv: list[str], env: dict[str, str], cwd: Path = ROOT, pass_fds: tuple[int, ...] = ()
) -> float:
    """Wall time of one command; a failure stops the benchmark with its output."""
    started = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, check=False, pass_fds=pass_fds
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return elapsed


def invoke(*args: str) -> list[str]:
    return [str(BIN / "invoke"), *args]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def environment_file(
    folder: Path, name: str, url_var: str = "DATABASE_URL", **sections: Any
) -> Path:
    """An environment file for the benchmark, folders under ``folder``."""
    import yaml

    data: dict[str, Any] = {
        "database": {"url": "${" + url_var + "}", "connect_timeout": 10},
        "backup": {"folder": str(folder / "backups"), "keep": 1},
        "policy": {"confirm": "never"},
        "reports": {"folder": str(folder / "reports")},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    directory = folder / "environments"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.yml").write_text(yaml.safe_dump(data))
    return directory


def empty_project(folder: Path) -> Path:
    """An Alembic project in ``folder`` with this repository's env.py and no revisions yet;
    returns its script folder (revisions go in ``versions/``).
    """
    scripts = folder / "migrations"
    (scripts / "versions").mkdir(parents=True)
    shutil.copy(ROOT / "migrations" / "env.py", scripts / "env.py")
    shutil.copy(ROOT / "migrations" / "script.py.mako", scripts / "script.py.mako")
    ini = (ROOT / "alembic.ini").read_text()
    (folder / "alembic.ini").write_text(
        ini.replace("script_location = %(here)s/migrations", f"script_location = {scripts}")
    )
    return scripts


def alembic_settings(folder: Path) -> dict[str, str]:
    """The environment file's ``alembic`` section for a project made by ``empty_project``."""
    return {"ini": str(folder / "alembic.ini"), "script_location": str(folder / "migrations")}


def installed_bytecode() -> None:
    """Compile the package's modules, as `pip install` does for a user's install.

    An editable install under PYTHONDONTWRITEBYTECODE=1 (CI images, this machine)
    compiles every module of ours at every start while Alembic's are read from pip's
    .pyc files; measured at 60 ms of `invoke migrate`, a cost no installed user pays."""
    import compileall

    compileall.compile_dir(str(ROOT / "tasks"), quiet=1)


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def finish(name: str, figures: dict[str, Any]) -> None:
    """The last line: machine-readable."""
    print(f"RESULT {json.dumps({'benchmark': name, 'machine': machine(), **figures})}")


def which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} is not on PATH; install the PostgreSQL client.")
    return found


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone S3 server on a free loopback port, for the remote-storage case."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()  # noqa: S310
                break
            except OSError:
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def pgbench(url: str, script: Path, log_prefix: Path, duration: int) -> subprocess.Popen[str]:
    """8 pgbench clients (2 threads) running ``script`` for ``duration`` seconds, each
    transaction's latency logged under ``log_prefix`` (read back by ``latencies``)."""
    return subprocess.Popen(
        [
            which("pgbench"),
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            str(duration),
            "-f",
            str(script),
            "-l",
            f"--log-prefix={log_prefix}",
        ],
        env=libpq_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def latencies(folder: Path, prefix: str) -> list[float]:
    """Per-transaction latencies in seconds from pgbench's -l logs."""
    values = []
    for log in folder.glob(f"{prefix}*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                values.append(int(parts[2]) / 1e6)
    return sorted(values)


def failed_transactions(output: str) -> int:
    for line in output.splitlines():
        if "number of failed transactions" in line:
            return int(line.split(":")[1].split()[0])
    return 0
