"""Health cost: the health step in process, `invoke health` wall time, `invoke --list` wall time.

Goals on loopback: the step under 0.3 s, `invoke health` under 1 s, `invoke --list`
under 0.5 s. The seed's health checks took 3-5 s.

    python benchmarks/bench_health.py [--runs 10] [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from common import (
    arguments,
    create_database,
    drop_database,
    environment_file,
    finish,
    invoke,
    median,
    postgres,
    timed_run,
)

SEED_SECONDS = 3.0  # the lower end of the seed's 3-5 s


def main() -> None:
    args = arguments(__doc__, runs=10)
    runs = 1 if args.quick else args.runs
    work = Path(tempfile.mkdtemp(prefix="bench-health-"))
    environments = environment_file(work, "bench")
    with postgres() as admin:
        url = create_database(admin)
        env = os.environ | {"DATABASE_URL": url, "MIGRATE_ENVIRONMENTS_DIR": str(environments)}
        timed_run(invoke("migrate", "--env", "bench", "--yes", "--no-backup"), env)

        from safe_migrations.core.config import load_environment
        from safe_migrations.pipeline.health import run_health
        from safe_migrations.project.alembic_api import project_for

        loaded = load_environment("bench", environ=env, directory=environments)
        project = project_for(loaded)
        run_health(loaded, project)  # warm: imports and revision files are read once per process
        step = []
        for _ in range(runs):
            started = time.perf_counter()
            results = run_health(loaded, project)
            step.append(time.perf_counter() - started)
            assert all(r.ok for r in results), results
        cli = [timed_run(invoke("health", "--env", "bench", "--json"), env) for _ in range(runs)]
        listing = [timed_run(invoke("--list"), env) for _ in range(runs)]
        drop_database(admin, url)
    shutil.rmtree(work, ignore_errors=True)
    print(f"health step in process:       median {median(step) * 1000:.1f} ms (goal < 300 ms)")
    print(
        f"invoke health --json (wall):  median {median(cli):.3f} s (goal < 1 s; seed 3-5 s, "
        f"{SEED_SECONDS / median(cli):.1f}x faster than its lower end)"
    )
    print(f"invoke --list (wall):         median {median(listing):.3f} s (goal < 0.5 s)")
    finish(
        "health",
        {
            "runs": runs,
            "step_s": round(median(step), 4),
            "invoke_health_s": round(median(cli), 3),
            "invoke_list_s": round(median(listing), 3),
            "ratio_vs_seed_3s": round(median(cli) / SEED_SECONDS, 3),
        },
    )


if __name__ == "__main__":
    main()
