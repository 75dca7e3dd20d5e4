"""Zero-downtime operations: what writing clients feel while each operation runs.

A table of 2,000,000 rows (``--rows``) takes single-row UPDATEs from 8 pgbench clients
for the whole round. Meanwhile one revision runs one plain Alembic operation on it:
``create_index``, a unique index, a foreign key, a check constraint, ``alter_column``
to NOT NULL, a unique constraint. Each operation runs twice, on fresh databases: with
``invoke migrate`` and ``migration.safe_operations: rewrite``, and with bare
``alembic upgrade head``. Printed per operation: the clients' worst latency and p99
during the round, and the migration's duration; the ratio is rewrite's worst latency
over bare Alembic's.

    python benchmarks/bench_zero_downtime.py [--rows 2000000] [--duration 14] [--quick]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import (
    BIN,
    alembic_settings,
    arguments,
    create_database,
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

OPERATIONS = {
    "create_index": 'op.create_index("ix_t_v", "t", ["v"])',
    "unique_index": 'op.create_index("ux_t_v", "t", ["v"], unique=True)',
    "foreign_key": 'op.create_foreign_key("fk_t_ref", "t", "parent", ["ref"], ["id"])',
    "check_constraint": 'op.create_check_constraint("ck_t_v", "t", "v > 0")',
    "not_null": 'op.alter_column("t", "v", existing_type=sa.Integer, nullable=False)',
    "unique_constraint": 'op.create_unique_constraint("uq_t_v", "t", ["v"])',
}
UPDATE = "\\set id random(1, {rows})\nUPDATE t SET ref = ref WHERE id = :id;\n"


def make_project(folder: Path, operation: str, rows: int) -> None:
    scripts = empty_project(folder)
    (scripts / "versions" / "t1.py").write_text(
        '"""the table"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        "revision = 't1'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n"
        '    op.create_table("t", sa.Column("id", sa.Integer, primary_key=True),\n'
        '                    sa.Column("v", sa.Integer), sa.Column("ref", sa.Integer))\n'
        '    op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))\n'
        '    op.execute("INSERT INTO parent SELECT i FROM generate_series(0, 99) i")\n'
        f'    op.execute("INSERT INTO t SELECT i, i, i % 100 FROM generate_series(1, {rows}) i")\n'
        '    op.execute("ANALYZE t")\n'
        "\n\ndef downgrade():\n    pass\n"
    )
    (scripts / "versions" / "t2.py").write_text(
        '"""the operation"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
        "revision = 't2'\ndown_revision = 't1'\nbranch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade():\n    {operation}\n\n\ndef downgrade():\n    pass\n"
    )


def one_round(
    admin: str, work: Path, side: str, rows: int, duration: int, quick: bool = False
) -> dict[str, float]:
    url = create_database(admin, prefix=f"zd_{side}")
    env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(work / "environments")}
    alembic = [str(BIN / "alembic"), "-c", str(work / "alembic.ini")]
    subprocess.run([*alembic, "upgrade", "t1"], env=env, check=True, capture_output=True)
    script = work / "update.sql"
    script.write_text(UPDATE.format(rows=rows))
    logs = work / f"logs-{side}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    bench = pgbench(url, script, logs / "pgbench", duration)
    time.sleep(2)
    began = time.perf_counter()
    command = (
        invoke("migrate", "--env", "bench", "--yes", "--no-backup", "--skip-validation")
        if side == "rewrite"
        else [*alembic, "upgrade", "head"]
    )
    migration = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    output, _ = bench.communicate(timeout=duration + 120)
    values = latencies(logs, "pgbench")
    drop_database(admin, url)
    if migration.returncode != 0:
        raise SystemExit(f"{side} migration failed:\n{migration.stdout}\n{migration.stderr}")
    if seconds > duration - 2 and not quick:
        raise SystemExit(f"{side}: the migration outlasted the clients; raise --duration")
    return {
        "worst_s": round(values[-1], 3) if values else float("nan"),
        "p99_s": round(values[int(len(values) * 0.99) - 1], 4) if values else float("nan"),
        "failed": failed_transactions(output),
        "migration_s": round(seconds, 2),
    }


def main() -> None:
    args = arguments(__doc__, runs=1, rows=2_000_000, duration=14)
    rows, duration = (20_000, 6) if args.quick else (args.rows, args.duration)
    chosen = ["create_index"] if args.quick else list(OPERATIONS)
    figures: dict[str, float] = {}
    with postgres() as admin:
        for name in chosen:
            work = Path(tempfile.mkdtemp(prefix=f"bench-zd-{name}-"))
            make_project(work, OPERATIONS[name], rows)
            environment_file(
                work,
                "bench",
                alembic=alembic_settings(work),
                migration={"lock_timeout": 0.2, "lock_budget": 60, "safe_operations": "rewrite"},
                health={"check_blocking_sessions": False, "lint": False},
            )
            rounds = {
                side: one_round(admin, work, side, rows, duration, args.quick)
                for side in ("rewrite", "bare")
            }
            shutil.rmtree(work, ignore_errors=True)
            ratio = rounds["rewrite"]["worst_s"] / rounds["bare"]["worst_s"]
            said = " | ".join(
                f"{side}: worst {found['worst_s']:.3f} s, p99 {found['p99_s']:.4f} s, "
                f"migration {found['migration_s']:.1f} s"
                for side, found in rounds.items()
            )
            print(f"{name:<18} {said} | worst ratio {ratio:.2f}")
            for side, found in rounds.items():
                figures.update({f"{name}_{side}_{k}": v for k, v in found.items()})
            figures[f"{name}_worst_ratio"] = round(ratio, 3)
    print(f"8 pgbench clients updating single rows of a {rows:,}-row table during each operation")
    finish("zero_downtime", {"rows": rows, **figures})


if __name__ == "__main__":
    main()
