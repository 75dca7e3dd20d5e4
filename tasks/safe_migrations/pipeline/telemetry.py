"""A run's traces and metrics for the tools a team already watches (``telemetry``).

Built from the run's record once it is complete: a span for the run, one per step,
one per revision inside the upgrade step and one per statement inside its revision,
with their real durations; metrics for the run's duration, its lock wait, the
revisions applied and the backup's size and seconds. They go to an OTLP/HTTP collector
(``telemetry.otlp_endpoint`` or the standard ``OTEL_EXPORTER_OTLP_*`` variables), to a
file of OTLP JSON lines (``telemetry.file``) and to node_exporter's textfile format
(``telemetry.prometheus_textfile``). No span carries a password, a URL or a query's
text: a statement is its kind ("ALTER TABLE"). The OpenTelemetry SDK is an optional
extra; configured without it, the run stops at the start with one sentence. A collector
that cannot be reached is a warning: the migration's outcome is not the telemetry's.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import ConfigError

INSTALL = "pip install 'safe-alembic-migrations[otel]'"


def endpoint(env: Environment) -> str | None:
    """The OTLP/HTTP base URL: the environment's, else OpenTelemetry's own variables."""
    configured = env.settings.telemetry.otlp_endpoint
    return (
        configured
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    )


def wanted(env: Environment) -> bool:
    settings = env.settings.telemetry
    return bool(endpoint(env) or settings.file or settings.prometheus_textfile)


def check_installed(env: Environment) -> None:
    """Configured telemetry without the SDK: one sentence, before the run does anything."""
    if not (endpoint(env) or env.settings.telemetry.file):
        return  # the textfile needs no SDK
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{env.name}: telemetry is configured (telemetry.otlp_endpoint, telemetry.file or "
            f"OTEL_EXPORTER_OTLP_*) but the OpenTelemetry SDK is not installed; {INSTALL}."
        ) from None


def emit(env: Environment, record: dict[str, Any]) -> list[str]:
    """Send the run's spans and metrics where configured; the warnings to show."""
    warnings = []
    settings = env.settings.telemetry
    if settings.prometheus_textfile:
        try:
            write_textfile(Path(settings.prometheus_textfile), record)
        except OSError as exc:
            warnings.append(f"the Prometheus textfile could not be written: {exc.strerror}")
    if endpoint(env) or settings.file:
        spans, metrics = _collect(env, record)
        if settings.file:
            try:
                _append_json(Path(settings.file), spans, metrics)
            except OSError as exc:
                warnings.append(f"the telemetry file could not be written: {exc.strerror}")
        base = endpoint(env)
        if base:
            warnings += _send(env, base, spans, metrics)
    return warnings


def _ns(moment: str) -> int:
    return int(datetime.fromisoformat(moment).timestamp() * 1_000_000_000)


def _collect(env: Environment, record: dict[str, Any]) -> tuple[list[Any], Any]:
    """The run as finished spans and one batch of metrics, from the SDK's in-memory
    readers (spans keep their real times: each is started and ended at them)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import Status, StatusCode, set_span_in_context

    from safe_migrations.pipeline.report import TOOL_VERSION

    resource = Resource.create(
        {
            "service.name": "safe-migrations",
            "service.version": TOOL_VERSION,
            "deployment.environment": env.name,
        }
    )
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("safe_migrations")
    start = _ns(record["started_at"])
    end = _ns(record["finished_at"]) if record.get("finished_at") else start
    run = tracer.start_span(f"{record['operation']} {env.name}", start_time=start)
    run.set_attributes(_run_attributes(record))
    if not record.get("success"):
        run.set_status(Status(StatusCode.ERROR, f"exit code {record.get('exit_code')}"))
    context = set_span_in_context(run)
    moment = start
    for step in record.get("steps") or []:
        length = int(float(step.get("duration") or 0) * 1e9)
        span = tracer.start_span(f"step {step['name']}", context=context, start_time=moment)
        span.set_attributes({"step.name": step["name"], "step.ok": bool(step.get("ok"))})
        details = step.get("details") or {}
        if "lock_wait" in details:
            span.set_attribute("lock.wait_seconds", float(details["lock_wait"] or 0))
        if step["name"] in ("upgrade", "downgrade"):
            applied = record.get("applied") or []
            _revisions(tracer, set_span_in_context(span), moment, applied, record)
        if not step.get("ok"):
            span.set_status(Status(StatusCode.ERROR, "failed"))
        span.end(end_time=moment + length)
        moment += length
    run.end(end_time=max(end, moment))
    provider.shutdown()
    reader = InMemoryMetricReader()
    meters = MeterProvider(resource=resource, metric_readers=[reader])
    _metrics(meters.get_meter("safe_migrations"), record)
    data = reader.get_metrics_data()
    meters.shutdown()
    return list(memory.get_finished_spans()), data


def _run_attributes(record: dict[str, Any]) -> dict[str, Any]:
    applied = record.get("applied") or []
    backup = record.get("backup") or {}
    attributes: dict[str, Any] = {
        "migration.environment": record["environment"],
        "migration.operation": record["operation"],
        "migration.success": bool(record.get("success")),
        "migration.exit_code": int(record.get("exit_code") or 0),
        "migration.pre_revision": str(record.get("pre_revision") or "unknown"),
        "migration.post_revision": str(record.get("post_revision") or "unknown"),
        "migration.revisions_applied": len(applied),
        "migration.retries": sum(int(a.get("retries") or 0) for a in applied),
        "migration.rewrites": sum(len(a.get("rewritten") or []) for a in applied),
        "migration.lock_wait_seconds": _lock_wait(record),
    }
    if record.get("failed_revision"):
        attributes["migration.failed_revision"] = str(record["failed_revision"])
    if backup:
        attributes["backup.bytes"] = int(backup.get("size") or 0)
        attributes["backup.seconds"] = float(backup.get("duration") or 0)
    return attributes


def _lock_wait(record: dict[str, Any]) -> float:
    for step in record.get("steps") or []:
        wait = (step.get("details") or {}).get("lock_wait")
        if wait:
            return float(wait)
    return 0.0


def _revisions(
    tracer: Any, context: Any, start: int, applied: list[dict[str, Any]], record: dict[str, Any]
) -> None:
    moment = start
    for revision in applied:
        length = int(float(revision.get("duration") or 0) * 1e9)
        waits = [
            r for r in record.get("retries") or [] if r.get("revision") == revision["revision"]
        ]
        span = tracer.start_span(
            f"revision {revision['revision']}", context=context, start_time=moment
        )
        span.set_attributes(
            {
                "migration.revision": revision["revision"],
                "migration.direction": revision.get("direction") or "upgrade",
                "migration.retries": int(revision.get("retries") or 0),
                "migration.autocommit": bool(revision.get("autocommit")),
                "migration.rewrites": len(revision.get("rewritten") or []),
                "migration.statements": len(revision.get("statements") or []),
                # its lock timeouts: each rolled back, waited out beside and retried
                "lock.timeouts": len(waits),
                "lock.wait_seconds": round(sum(float(w.get("waited") or 0) for w in waits), 4),
                "lock.holders": sum(len(w.get("holders") or []) for w in waits),
                "lock.relations": sorted({str(w["relation"]) for w in waits if w.get("relation")}),
            }
        )
        inner = _set(span)
        for statement in revision.get("statements") or []:
            begun = moment + int(float(statement["offset"]) * 1e9)
            child = tracer.start_span(
                f"statement {statement['kind']}", context=inner, start_time=begun
            )
            child.set_attribute("db.operation", statement["kind"])
            child.end(end_time=begun + int(float(statement["seconds"]) * 1e9))
        span.end(end_time=moment + length)
        moment += length


def _set(span: Any) -> Any:
    from opentelemetry.trace import set_span_in_context

    return set_span_in_context(span)


def _metrics(meter: Any, record: dict[str, Any]) -> None:
    labels = {
        "environment": record["environment"],
        "operation": record["operation"],
        "outcome": "succeeded" if record.get("success") else "failed",
    }
    meter.create_histogram("safe_migrations.run.duration", unit="s").record(
        float(record.get("duration") or 0), labels
    )
    meter.create_histogram("safe_migrations.lock.wait", unit="s").record(_lock_wait(record), labels)
    meter.create_counter("safe_migrations.revisions.applied").add(
        len(record.get("applied") or []), labels
    )
    backup = record.get("backup")
    if backup:
        meter.create_gauge("safe_migrations.backup.size", unit="By").set(
            int(backup.get("size") or 0), labels
        )
        meter.create_histogram("safe_migrations.backup.duration", unit="s").record(
            float(backup.get("duration") or 0), labels
        )


def _append_json(path: Path, spans: list[Any], metrics: Any) -> None:
    """One OTLP JSON line of traces and one of metrics (protobuf's JSON mapping, what
    ``google.protobuf.json_format`` and OTLP/JSON receivers read)."""
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from safe_migrations.core.files import append_line

    lines = [MessageToJson(encode_spans(spans), indent=None)]
    if metrics is not None:
        lines.append(MessageToJson(encode_metrics(metrics), indent=None))
    path.parent.mkdir(parents=True, exist_ok=True)
    for line in lines:
        append_line(path, (line + "\n").encode())


def _send(env: Environment, base: str, spans: list[Any], metrics: Any) -> list[str]:
    """Spans and metrics to the collector at ``base`` (OTLP/HTTP, protobuf)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    root = base.rstrip("/")
    traces = root if root.endswith("/v1/traces") else f"{root}/v1/traces"
    warnings = []
    timeout = env.settings.database.connect_timeout
    exporter = OTLPSpanExporter(endpoint=traces, timeout=timeout)
    if exporter.export(spans) is not SpanExportResult.SUCCESS:
        warnings.append(f"the run's spans did not reach the collector at {traces}")
    exporter.shutdown()
    if metrics is not None and not root.endswith("/v1/traces"):
        metric_exporter = OTLPMetricExporter(endpoint=f"{root}/v1/metrics", timeout=timeout)
        result = metric_exporter.export(metrics)
        if getattr(result, "name", "") != "SUCCESS":
            warnings.append(f"the run's metrics did not reach the collector at {root}")
        metric_exporter.shutdown()
    return warnings


def write_textfile(path: Path, record: dict[str, Any]) -> None:
    """node_exporter's textfile collector format, replaced whole (never half a file)."""
    from safe_migrations.core.files import write_atomic

    labels = ",".join(
        f'{key}="{_label(str(value))}"'
        for key, value in (
            ("environment", record["environment"]),
            ("operation", record["operation"]),
        )
    )
    backup = record.get("backup") or {}
    finished = record.get("finished_at") or record["started_at"]
    values = [
        ("run_duration_seconds", "the last run's duration", record.get("duration") or 0),
        ("run_success", "1 when the last run succeeded", 1 if record.get("success") else 0),
        ("run_exit_code", "the last run's exit code", record.get("exit_code") or 0),
        ("run_finished_timestamp_seconds", "when the last run ended", _ns(finished) / 1e9),
        ("lock_wait_seconds", "the last run's wait for its locks", _lock_wait(record)),
        ("revisions_applied", "revisions the last run applied", len(record.get("applied") or [])),
    ]
    if backup:
        values += [
            ("backup_bytes", "the last run's backup size", backup.get("size") or 0),
            ("backup_seconds", "the last run's backup duration", backup.get("duration") or 0),
        ]
    lines = []
    for name, help_text, value in values:
        metric = f"safe_migrations_{name}"
        lines += [
            f"# HELP {metric} {help_text}",
            f"# TYPE {metric} gauge",
            f"{metric}{{{labels}}} {float(value):g}",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(lines) + "\n", mode=0o644)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
