"""Zero-downtime operations: what the application feels while each form of each operation
runs, over the corpus of tests/test_revision_forms.py (71 forms: batch and not,
``index=True``, inline keys, names near 63 characters, schema-qualified tables, data
statements).

Every table of the corpus holds 1,000,000 rows (``--rows``). For the whole round, 8
pgbench clients each run one transaction after another: a single-row UPDATE of ``t``,
of ``app.s`` and of the long-named table, and a read of ``k``. Meanwhile one revision
runs one form: with ``invoke migrate`` under ``migration.safe_operations: rewrite`` and
the shipped ``max_rows_in_one_statement`` (100,000), and, for each form that runs, with
bare ``alembic upgrade head`` on a copy of the same database. Printed per form: the
clients' worst latency and p99 during the round, and the migration's duration; a form
refused before any statement says so. The ratio is rewrite's worst latency over bare
Alembic's; the last line counts the forms that ran with the worst latency at most
0.3 s.

    python benchmarks/bench_zero_downtime.py [--rows 1000000] [--duration 12] [--only NAME]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from common import (
    BIN,
    alembic_settings,
    arguments,
    drop_database,
    empty_project,
    environment_file,
    failed_transactions,
    finish,
    invoke,
    latencies,
    pgbench,
    postgres,
)
from test_revision_forms import FORMS, LONG, base

LOAD = (
    "\\set id random(1, {rows})\n"
    "BEGIN;\n"
    "UPDATE t SET ref = ref WHERE id = :id;\n"
    "UPDATE app.s SET ref = ref WHERE id = :id;\n"
    f"UPDATE {LONG} SET the_referenced_parent_identifier = the_referenced_parent_identifier "
    "WHERE id = :id;\n"
    "SELECT 1 FROM k LIMIT 1;\n"
    "END;\n"
)
LONGER = {"backfill": 40}  # forms that take longer than the default round
BUDGET_S = 0.3


def revision(number: int, body: str) -> str:
    down = repr(f"t{number - 1}") if number > 1 else "None"
    return (
        '"""a form"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        f"revision = 't{number}'\ndown_revision = {down}\nbranch_labels = None\n"
        "depends_on = None\n\n\ndef upgrade():\n"
        + textwrap.indent(textwrap.dedent(body).strip(), "    ")
        + "\n\n\ndef downgrade():\n    pass\n"
    )


def sql(url: str, statement: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(statement))
    engine.dispose()


def copy_of(admin: str, template: str, side: str) -> str:
    """A database copied from the template (the corpus's tables, at revision t1)."""
    from sqlalchemy.engine import make_url

    name = f"zd_{side}_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    sql(admin, f'CREATE DATABASE "{name}" TEMPLATE "{make_url(template).database}"')
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def one_round(
    admin: str, template: str, work: Path, side: str, rows: int, duration: int
) -> dict[str, float | str]:
    url = copy_of(admin, template, side)
    env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(work / "environments")}
    script = work / "load.sql"
    script.write_text(LOAD.format(rows=rows))
    logs = work / f"logs-{side}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    bench = pgbench(url, script, logs / "pgbench", duration)
    time.sleep(2)
    began = time.perf_counter()
    command = (
        invoke("migrate", "--env", "bench", "--yes", "--no-backup", "--skip-validation")
        if side == "rewrite"
        else [str(BIN / "alembic"), "-c", str(work / "alembic.ini"), "upgrade", "head"]
    )
    migration = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    output, _ = bench.communicate(timeout=duration + 120)
    values = latencies(logs, "pgbench")
    drop_database(admin, url)
    if migration.returncode == 2 and side == "rewrite":
        return {"outcome": "refused"}
    if migration.returncode != 0:
        raise SystemExit(f"{side} migration failed:\n{migration.stdout}\n{migration.stderr}")
    return {
        "outcome": "ran" if seconds < duration - 2 else "outlasted the clients",
        "worst_s": round(values[-1], 3) if values else float("nan"),
        "p99_s": round(values[int(len(values) * 0.99) - 1], 4) if values else float("nan"),
        "failed": failed_transactions(output),
        "migration_s": round(seconds, 2),
    }


def template_database(admin: str, work: Path, rows: int) -> str:
    """The corpus's tables with ``rows`` rows each, at t1: copied for every round."""
    from common import create_database

    url = create_database(admin, prefix="zd_template")
    scripts = empty_project(work)
    (scripts / "versions" / "t1.py").write_text(revision(1, base(rows)))
    env = os.environ | {"DATABASE_URL": url}
    alembic = [str(BIN / "alembic"), "-c", str(work / "alembic.ini")]
    subprocess.run([*alembic, "upgrade", "t1"], env=env, check=True, capture_output=True)
    sql(url, "VACUUM ANALYZE")
    return url


def main() -> None:
    args = arguments(__doc__, runs=1, rows=1_000_000, duration=12, only="")
    quick = ["batch_create_index"]
    rows, duration = (20_000, 6) if args.quick else (args.rows, args.duration)
    chosen = quick if args.quick else [args.only] if args.only else sorted(FORMS)
    figures: dict[str, float | str] = {}
    ran = kept = 0
    with postgres() as admin:
        base_work = Path(tempfile.mkdtemp(prefix="bench-zd-template-"))
        template = template_database(admin, base_work, rows)
        try:
            for name in chosen:
                work = Path(tempfile.mkdtemp(prefix=f"bench-zd-{name}-"))
                scripts = empty_project(work)
                (scripts / "versions" / "t1.py").write_text(revision(1, base(rows)))
                (scripts / "versions" / "t2.py").write_text(revision(2, FORMS[name][0]))
                environment_file(
                    work,
                    "bench",
                    alembic=alembic_settings(work),
                    migration={
                        "lock_timeout": 0.2,
                        "lock_budget": 60,
                        "safe_operations": "rewrite",
                        "max_rows_in_one_statement": 100_000,
                    },
                    health={"check_blocking_sessions": False, "lint": False},
                )
                seconds = LONGER.get(name, duration) if not args.quick else duration
                safe = one_round(admin, template, work, "rewrite", rows, seconds)
                if safe["outcome"] == "refused":
                    print(f"{name:<44} refused before any statement (exit 2)")
                    figures[f"{name}_outcome"] = "refused"
                    shutil.rmtree(work, ignore_errors=True)
                    continue
                bare = one_round(admin, template, work, "bare", rows, seconds)
                shutil.rmtree(work, ignore_errors=True)
                ratio = float(safe["worst_s"]) / float(bare["worst_s"])
                ran += 1
                kept += float(safe["worst_s"]) <= BUDGET_S
                print(
                    f"{name:<44} rewrite: worst {safe['worst_s']:.3f} s, p99 "
                    f"{safe['p99_s']:.4f} s, migration {safe['migration_s']:.1f} s | bare: "
                    f"worst {bare['worst_s']:.3f} s, migration {bare['migration_s']:.1f} s | "
                    f"worst ratio {ratio:.2f}"
                    + ("" if safe["outcome"] == "ran" else f" ({safe['outcome']})")
                )
                for side, found in (("rewrite", safe), ("bare", bare)):
                    figures.update({f"{name}_{side}_{k}": v for k, v in found.items()})
                figures[f"{name}_worst_ratio"] = round(ratio, 3)
        finally:
            drop_database(admin, template)
            shutil.rmtree(base_work, ignore_errors=True)
    print(
        f"8 pgbench clients writing single rows of {rows:,}-row tables during each form; "
        f"{kept} of {ran} forms that ran kept the worst latency at most {BUDGET_S} s"
    )
    finish("zero_downtime", {"rows": rows, "ran": ran, "kept": kept, **figures})


if __name__ == "__main__":
    main()
