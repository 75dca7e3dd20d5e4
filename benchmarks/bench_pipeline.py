"""Pipeline overhead: `invoke migrate --yes --no-backup` against bare `alembic upgrade head`.

Generated chains of revisions (tables, columns, indexes) are applied to a fresh
database each run; both sides run as commands, alternately, on PostgreSQL (psycopg2)
and then on MariaDB (PyMySQL). Goals: ratio <= 1.3 on 40 revisions, <= 1.15 on 400,
and the pipeline's extra time per revision (the slope between the two chains) < 2 ms.

    python benchmarks/bench_pipeline.py [--revisions 40,400] [--runs 5] [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from common import (
    BIN,
    alembic_settings,
    arguments,
    create_database,
    drop_database,
    empty_project,
    environment_file,
    finish,
    installed_bytecode,
    invoke,
    mariadb,
    median,
    postgres,
    timed_run,
)


def generate_project(folder: Path, count: int) -> Path:
    """A script folder with ``count`` revisions and the models they end at."""
    scripts = empty_project(folder)
    tables: dict[str, list[str]] = {}
    indexes: list[tuple[str, str]] = []
    previous = None
    for number in range(1, count + 1):
        revision = f"b{number:04d}"
        kind = number % 3
        if kind == 1 or not tables:
            table = f"t{number:04d}"
            tables[table] = ["name"]
            up = (
                f'op.create_table("{table}", sa.Column("id", sa.BigInteger, primary_key=True), '
                f'sa.Column("name", sa.String(200)))'
            )
            down = f'op.drop_table("{table}")'
        elif kind == 2:
            table = list(tables)[-1]
            column = f"c{number:04d}"
            tables[table].append(column)
            up = f'op.add_column("{table}", sa.Column("{column}", sa.String(200)))'
            down = f'op.drop_column("{table}", "{column}")'
        else:
            table = list(tables)[-1]
            indexes.append((table, "name"))
            up = f'op.create_index("ix_{table}_name", "{table}", ["name"])'
            down = f'op.drop_index("ix_{table}_name", table_name="{table}")'
        (scripts / "versions" / f"{revision}.py").write_text(
            f'"""generated {number}"""\nimport sqlalchemy as sa\nfrom alembic import op\n\n'
            f"revision = {revision!r}\ndown_revision = {previous!r}\nbranch_labels = None\n"
            f"depends_on = None\n\n\ndef upgrade():\n    {up}\n\n\ndef downgrade():\n    {down}\n"
        )
        previous = revision
    lines = ["import sqlalchemy as sa", "metadata = sa.MetaData()"]
    for table, columns in tables.items():
        cols = ", ".join(
            f'sa.Column("{c}", sa.String(200), index={(table, c) in indexes})' for c in columns
        )
        lines.append(
            f'sa.Table("{table}", metadata, '
            f'sa.Column("id", sa.BigInteger, primary_key=True), {cols})'
        )
    (scripts / "models.py").write_text("\n".join(lines) + "\n")
    return folder


def measure(admin: str, work: Path, environments: Path, runs: int) -> dict:
    """Both sides on fresh databases of one server, alternately; medians and the ratio."""
    ours, raw, steps = [], [], {}
    for run in range(runs):
        for side in ("ours", "raw") if run % 2 == 0 else ("raw", "ours"):
            url = create_database(admin)
            env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(environments)}
            if side == "ours":
                ours.append(
                    timed_run(invoke("migrate", "--env", "bench", "--yes", "--no-backup"), env)
                )
            else:
                alembic = [str(BIN / "alembic"), "-c", str(work / "alembic.ini"), "upgrade", "head"]
                raw.append(timed_run(alembic, env))
            drop_database(admin, url)
    for report in (work / "reports").glob("bench-*.json"):
        for step in json.loads(report.read_text())["steps"]:
            steps.setdefault(step["name"], []).append(step["duration"])
        report.unlink()
    return {
        "raw_s": round(median(raw), 3),
        "ours_s": round(median(ours), 3),
        "ratio": round(median(ours) / median(raw), 3),
        "steps_s": {k: round(median(v), 4) for k, v in steps.items()},
    }


GOALS = {40: 1.3, 400: 1.15}


def show(engine: str, count: int, runs: int, figures: dict) -> None:
    goal = GOALS.get(count)
    print(f"{engine}: chain of {count} revisions, {runs} run(s) each side, fresh database each run")
    print(f"  bare alembic upgrade head:        median {figures['raw_s']:.3f} s")
    print(f"  invoke migrate --yes --no-backup: median {figures['ours_s']:.3f} s")
    print(f"  ratio ours/raw: {figures['ratio']:.2f}" + (f" (goal <= {goal})" if goal else ""))
    for name, value in figures["steps_s"].items():
        print(f"    step {name:<10} median {value:.3f} s")


def slope_ms(sizes: dict[int, dict]) -> float | None:
    """Our extra time per revision over bare Alembic, between the shortest and the longest
    chain (ms): what the history's length adds to the pipeline's fixed price."""
    if len(sizes) < 2:
        return None
    low, high = min(sizes), max(sizes)
    extra = [sizes[n]["ours_s"] - sizes[n]["raw_s"] for n in (low, high)]
    return round((extra[1] - extra[0]) / (high - low) * 1000, 3)


def measure_engine(
    engine: str, admin: str, chains: dict[int, tuple[Path, Path]], runs: int
) -> dict:
    """Every chain on one server; the shortest chain's figures at the top level."""
    sizes = {
        n: measure(admin, work, environments, runs) for n, (work, environments) in chains.items()
    }
    for count, figures in sizes.items():
        show(engine, count, runs, figures)
    slope = slope_ms(sizes)
    if slope is not None:
        print(f"  {engine}: extra per revision over bare Alembic: {slope:.2f} ms (goal < 2)")
    shortest = min(sizes)
    longer = {str(n): f for n, f in sizes.items() if n != shortest}
    return {**sizes[shortest], "longer": longer, "slope_ms_per_revision": slope}


def main() -> None:
    args = arguments(__doc__, runs=5, revisions="40,400")
    counts = [6, 12] if args.quick else sorted({int(n) for n in args.revisions.split(",")})
    runs = 1 if args.quick else args.runs
    installed_bytecode()
    chains = {}
    for count in counts:
        work = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{count}-"))
        generate_project(work, count)
        chains[count] = (work, environment_file(work, "bench", alembic=alembic_settings(work)))
    with postgres() as admin:
        figures = measure_engine("PostgreSQL", admin, chains, runs)
    with mariadb() as admin:
        maria = measure_engine("MariaDB", admin, chains, runs)
    for work, _ in chains.values():
        shutil.rmtree(work, ignore_errors=True)
    finish("pipeline", {"revisions": counts, "runs": runs, **figures, "mariadb": maria})


if __name__ == "__main__":
    main()
