"""Telemetry (issue 28) from real runs on PostgreSQL: OTLP JSON lines that protobuf's own
JSON decoder reads, with a span per revision and statement; spans and metrics sent by
the SDK's OTLP/HTTP exporter to a receiver on loopback that decodes them with
opentelemetry-proto; node_exporter's textfile; no password, URL or query text in any
of it; and one sentence when the SDK is not installed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from google.protobuf.json_format import Parse
from helpers import cli_env, run_invoke
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pgcluster import PASSWORD

REVISIONS = [f"000{i}" for i in range(1, 8)]


def spans_of(request: ExportTraceServiceRequest) -> list:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attributes(span) -> dict:  # noqa: ANN001 - a protobuf message
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_otlp_json_lines_hold_a_span_per_revision_and_statement(
    pg_url: str, tmp_path: Path
) -> None:
    file = tmp_path / "telemetry.jsonl"
    textfile = tmp_path / "textfile" / "safe_migrations.prom"
    env = cli_env(
        tmp_path,
        pg_url,
        policy={"confirm": "never"},
        telemetry={"file": str(file), "prometheus_textfile": str(textfile)},
    )
    result = run_invoke("migrate", "--env", "staging", "--backup", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    traces, metrics = file.read_text().splitlines()
    request = Parse(traces, ExportTraceServiceRequest())
    spans = spans_of(request)
    by_name = {s.name: s for s in spans}
    run = by_name["upgrade staging"]
    assert attributes(run)["migration.revisions_applied"] == 7
    assert attributes(run)["migration.post_revision"] == "0007"
    assert "migration.lock_wait_seconds" in attributes(run)
    assert attributes(run)["backup.bytes"] > 0
    revisions = [s for s in spans if s.name.startswith("revision ")]
    assert sorted(attributes(s)["migration.revision"] for s in revisions) == REVISIONS
    assert all(attributes(s)["lock.timeouts"] == 0 for s in revisions)  # nobody held a lock
    upgrade = by_name["step upgrade"]
    assert all(s.parent_span_id == upgrade.span_id for s in revisions)
    statements = [s for s in spans if s.name.startswith("statement ")]
    assert {s.name for s in statements} >= {"statement CREATE TABLE", "statement CREATE INDEX"}
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano for s in spans)
    names = {
        m.name
        for rm in Parse(metrics, ExportMetricsServiceRequest()).resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {"safe_migrations.run.duration", "safe_migrations.backup.size"} <= names
    prometheus = textfile.read_text()
    assert 'safe_migrations_run_success{environment="staging",operation="upgrade"} 1' in prometheus
    assert 'safe_migrations_revisions_applied{environment="staging",operation="upgrade"} 7' in (
        prometheus
    )
    for text in (traces, metrics, prometheus):
        assert PASSWORD not in text and "postgresql" not in text
        assert "CREATE TABLE users" not in text and "email" not in text  # no query text


class Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_spans_and_metrics_reach_an_otlp_http_receiver(
    pg_url: str, tmp_path: Path, receiver: str
) -> None:
    env = cli_env(tmp_path, pg_url, policy={"confirm": "never"}, telemetry={})
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver  # OpenTelemetry's own variable
    result = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr
    paths = [path for path, _ in Receiver.received]
    assert paths == ["/v1/traces", "/v1/metrics"]
    traces = ExportTraceServiceRequest.FromString(Receiver.received[0][1])
    revisions = [s for s in spans_of(traces) if s.name.startswith("revision ")]
    assert len(revisions) == 7
    metrics = ExportMetricsServiceRequest.FromString(Receiver.received[1][1])
    assert metrics.resource_metrics[0].scope_metrics[0].metrics
    assert PASSWORD.encode() not in Receiver.received[0][1] + Receiver.received[1][1]


def test_a_collector_that_is_down_is_a_warning_not_a_failed_migration(
    pg_url: str, tmp_path: Path
) -> None:
    env = cli_env(
        tmp_path,
        pg_url,
        policy={"confirm": "never"},
        telemetry={"otlp_endpoint": "http://127.0.0.1:9"},
        database={"connect_timeout": 2},
    )
    result = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "did not reach the collector at http://127.0.0.1:9/v1/traces" in result.stderr


def test_without_the_sdk_configured_telemetry_is_one_sentence(pg_url: str, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "opentelemetry"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # an opentelemetry without the SDK
    env = cli_env(tmp_path, pg_url, telemetry={"file": str(tmp_path / "t.jsonl")})
    env["PYTHONPATH"] = str(shadow.parent)
    result = run_invoke("migrate", "--env", "staging", "--no-backup", "--yes", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pip install 'safe-alembic-migrations[otel]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_revision_that_waited_for_a_lock_carries_its_figures(pg_url: str, tmp_path: Path) -> None:
    import time

    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    file = tmp_path / "telemetry.jsonl"
    env = cli_env(tmp_path, pg_url, policy={"confirm": "never"}, telemetry={"file": str(file)})
    first = run_invoke("migrate", "--env", "staging", "--revision", "0003", "--no-backup", env=env)
    assert first.returncode == 0, first.stderr
    file.unlink()
    engine = create_engine(pg_url, poolclass=NullPool)
    holding = threading.Event()

    def reader() -> None:  # an application's transaction on users, for 2.5 s
        with engine.begin() as connection:
            connection.execute(text("SELECT * FROM users LIMIT 1"))
            holding.set()
            time.sleep(2.5)

    thread = threading.Thread(target=reader)
    thread.start()
    holding.wait(10)
    result = run_invoke("migrate", "--env", "staging", "--no-backup", env=env)
    thread.join()
    engine.dispose()
    assert result.returncode == 0, result.stdout + result.stderr
    spans = spans_of(Parse(file.read_text().splitlines()[0], ExportTraceServiceRequest()))
    waited = next(s for s in spans if s.name == "revision 0004")
    figures = attributes(waited)
    assert figures["lock.timeouts"] >= 1 and figures["lock.wait_seconds"] > 0
    assert figures["lock.holders"] >= 1 and figures["migration.retries"] >= 1
