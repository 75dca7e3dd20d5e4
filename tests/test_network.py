"""A network that goes silent mid-statement: the runner notices within
``database.network_timeout`` and reports, instead of hanging until the kernel gives up
(issue 12, item 7). The runner lives in a network namespace of the test's own; the
server's packets are dropped with blackhole routes on both sides."""

from __future__ import annotations

import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, ScratchProject, write_environment
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool


@dataclass
class Namespace:
    name: str
    host_ip: str
    inner_ip: str

    def cut(self) -> None:
        """Drop every packet between the namespace and the host, silently."""
        ip("netns", "exec", self.name, "ip", "route", "add", "blackhole", f"{self.host_ip}/32")
        ip("route", "add", "blackhole", f"{self.inner_ip}/32")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _forward(server: socket.socket, target: tuple[str, int], stop: threading.Event) -> None:
    """A TCP proxy on the host side of the veth pair, one thread per connection."""

    def pipe(client: socket.socket) -> None:
        upstream = socket.create_connection(target)
        sockets = [client, upstream]
        try:
            while not stop.is_set():
                readable, _, _ = select.select(sockets, [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    server.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = server.accept()
        except TimeoutError:
            continue
        threading.Thread(target=pipe, args=(client,), daemon=True).start()


@pytest.fixture
def namespace(pg_admin_url: str) -> Iterator[tuple[Namespace, int]]:
    """A network namespace joined to the host by a veth pair, and a proxy port on the
    host side that forwards to the test PostgreSQL."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("the network test needs root (ip netns) under CI")
        pytest.skip("the network test needs root (ip netns)")
    tag = f"{os.getpid() % 10000}{random.randint(0, 99)}"
    net = random.randint(1, 250)
    space = Namespace(f"sm{tag}", f"10.233.{net}.1", f"10.233.{net}.2")
    host_if, inner_if = f"smh{tag}", f"smn{tag}"
    ip("netns", "add", space.name)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", inner_if)
        ip("link", "set", inner_if, "netns", space.name)
        ip("addr", "add", f"{space.host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        inside = ("netns", "exec", space.name, "ip")
        ip(*inside, "addr", "add", f"{space.inner_ip}/30", "dev", inner_if)
        ip(*inside, "link", "set", inner_if, "up")
        ip(*inside, "link", "set", "lo", "up")
        admin = make_url(pg_admin_url)
        server = socket.create_server((space.host_ip, 0))
        stop = threading.Event()
        proxy = threading.Thread(
            target=_forward,
            args=(server, (admin.host or "127.0.0.1", admin.port or 5432), stop),
            daemon=True,
        )
        proxy.start()
        yield space, server.getsockname()[1]
        stop.set()
        proxy.join(5)
        server.close()
    finally:
        subprocess.run(["ip", "route", "del", "blackhole", f"{space.inner_ip}/32"], check=False)
        subprocess.run(["ip", "link", "del", host_if], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", space.name], check=False)


def _when_sleeping(url: str, then: Callable[[], None]) -> threading.Thread:
    database = make_url(url).database

    def watch() -> None:  # autocommit: pg_stat_activity is a snapshot per transaction
        engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            for _ in range(600):
                if connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = :d "
                        "AND state = 'active' AND query LIKE '%pg_sleep(120)%' "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"d": database},
                ).scalar():
                    break
                time.sleep(0.1)
        engine.dispose()
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_silent_network_mid_statement_fails_within_the_network_timeout(
    pg_url: str, namespace: tuple[Namespace, int], scratch: ScratchProject, tmp_path: Path
) -> None:
    space, port = namespace
    scratch.add('op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))')
    scratch.add('op.execute("SELECT pg_sleep(120)")')
    write_environment(
        tmp_path / "environments",
        "staging",
        tmp_path / "var",
        database={"connect_timeout": 2, "network_timeout": 3},
        alembic={"script_location": str(scratch.folder)},
    )
    remote = make_url(pg_url).set(host=space.host_ip, port=port)
    invoke = str(Path(sys.executable).parent / "invoke")
    watcher = _when_sleeping(pg_url, space.cut)
    run = subprocess.run(
        ["ip", "netns", "exec", space.name, invoke, "migrate", "--env", "staging", "--yes"],
        cwd=ROOT,
        env=os.environ
        | {
            "MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"),
            "DATABASE_URL": remote.render_as_string(hide_password=False),
        },
        capture_output=True,
        text=True,
        timeout=100,  # without keepalives the runner waits out the 120 s sleep and more
        check=False,
    )
    watcher.join(5)
    assert run.returncode == 1, run.stderr
    assert "r002" in run.stderr and "Traceback" not in run.stderr
    reports = sorted((tmp_path / "var" / "reports").glob("staging-*.json"))
    report = json.loads(reports[-1].read_text())
    assert report["failed_revision"] == "r002" and report["exit_code"] == 1
    assert [a["revision"] for a in report["applied"]] == ["r001"]
    assert report["post_revision"] is None  # the network is still gone: unknown, not guessed
