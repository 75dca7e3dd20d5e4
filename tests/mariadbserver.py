"""A throwaway MariaDB server for the test session, from the installed server binaries.

``mariadb-install-db`` into a temporary folder, ``mariadbd`` on a free port and a
socket of its own, and a test account whose password holds shell metacharacters,
so credentials are really exercised. TEST_MYSQL_URL (an account allowed to create
databases) points the suite at a server you already run instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgcluster import PASSWORD, free_port

USER = "tester"


def find_server() -> tuple[str, str] | None:
    """(mariadb-install-db, mariadbd), from PATH or Debian's /usr/sbin."""
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    server = shutil.which("mariadbd") or shutil.which("mysqld")
    for candidate in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld"):
        if server is None and os.access(candidate, os.X_OK):
            server = candidate
    return (install, server) if install and server else None


@dataclass
class Server:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.folder / "mysqld.sock"

    @property
    def url(self) -> str:
        return f"mysql+pymysql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{self.port}/mysql"

    def start(self, install: str, server: str) -> None:
        data = self.folder / "data"
        user = "mysql" if os.geteuid() == 0 and _has_user("mysql") else None
        owner = ["--user=" + user] if user else []
        if user:
            shutil.chown(self.folder, user, user)
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *owner,
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - kept for the server
        self.process = subprocess.Popen(
            [
                server,
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.folder / 'mysqld.pid'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=0",
                "--max-connections=300",
                *owner,
            ],
            stdout=log,
            stderr=log,
        )
        self._wait_and_create_account()

    def _wait_and_create_account(self) -> None:
        import pymysql

        deadline = time.monotonic() + 60
        while True:
            try:
                connection = pymysql.connect(unix_socket=str(self.socket), user="root")
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline or (self.process and self.process.poll()):
                    raise RuntimeError(
                        "the test MariaDB did not start: "
                        + (self.folder / "server.log").read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.2)
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE USER '{USER}'@'%%' IDENTIFIED BY %s", (PASSWORD,))
            cursor.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION")
        connection.close()

    def stop(self) -> None:
        try:
            if self.process is not None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@contextmanager
def mysql_admin_url(missing: Callable[[str], None]) -> Iterator[str]:
    """TEST_MYSQL_URL, else a throwaway server for the duration; ``missing`` is called
    with a sentence when neither is possible and must not return."""
    given = os.environ.get("TEST_MYSQL_URL")
    if given:
        yield given.replace("mysql://", "mysql+pymysql://", 1)
        return
    binaries = find_server()
    if binaries is None:
        missing(
            "No MariaDB server binaries found (mariadb-install-db, mariadbd); install "
            "mariadb-server or set TEST_MYSQL_URL."
        )
        raise RuntimeError("unreachable")
    folder = Path(tempfile.mkdtemp(prefix="migrate-tests-mariadb-"))
    os.chmod(folder, 0o755)
    server = Server(folder, free_port())
    try:
        server.start(*binaries)
        yield server.url
    finally:
        server.stop()
