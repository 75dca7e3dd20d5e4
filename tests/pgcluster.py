"""A throwaway PostgreSQL cluster for the test session, from the installed server binaries.

initdb in a temporary folder, a free port on 127.0.0.1, password (scram) auth so
credentials are really exercised. As root, the server runs as the ``postgres``
user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# Shell metacharacters on purpose: nothing may build a shell string from it.
PASSWORD = "p@ss w'rd\"$;&|`x"


def find_bindir() -> Path | None:
    """PG_BINDIR, else the newest /usr/lib/postgresql/N/bin, else initdb on PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    bindir: Path
    folder: Path
    port: int
    user: str | None

    @property
    def url(self) -> str:
        password = quote(PASSWORD, safe="")
        return f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        kwargs: dict = {}
        if self.user:
            entry = pwd.getpwnam(self.user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        subprocess.run(argv, check=True, capture_output=True, cwd=self.folder, **kwargs)

    def start(self) -> None:
        data = self.folder / "data"
        pwfile = self.folder / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            for path in (self.folder, pwfile):
                shutil.chown(path, self.user, self.user)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.folder / "server.log"),
            "start",
        )

    def stop(self) -> None:
        try:
            self._run(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "stop",
            )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> Cluster | None:
    bindir = find_bindir()
    if bindir is None:
        return None
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            user = "nobody"
    folder = Path(tempfile.mkdtemp(prefix="migrate-tests-pg-"))
    os.chmod(folder, 0o755)
    cluster = Cluster(bindir, folder, free_port(), user)
    cluster.start()
    return cluster


@contextmanager
def admin_url(missing: Callable[[str], None]) -> Iterator[str]:
    """TEST_DATABASE_URL (a superuser URL), else a throwaway cluster for the duration.

    ``missing`` is called with a sentence when neither is possible; it must not return.
    """
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given.replace("postgresql://", "postgresql+psycopg2://", 1)
        return
    cluster = start_cluster()
    if cluster is None:
        missing(
            "No PostgreSQL server binaries found (initdb); install postgresql "
            "or set TEST_DATABASE_URL."
        )
        raise RuntimeError("unreachable")
    try:
        yield cluster.url
    finally:
        cluster.stop()
