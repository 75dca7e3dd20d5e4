"""Smoke test: every benchmark runs at its smallest size and prints its ratios, so none can rot.

The figures themselves are measured by running the scripts (README, Performance), never asserted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))


def test_readme_documents_exactly_the_benchmark_scripts() -> None:
    """Each script is smoke-run below; each is in README's Performance table, and the
    table names no script that does not exist."""
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"benchmarks/(bench_\w+)\.py", readme))
    assert SCRIPTS and documented == {p.stem for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_quick_and_prints_a_result(script: Path, pg_admin_url: str) -> None:
    env = os.environ | {"TEST_DATABASE_URL": pg_admin_url}
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last.removeprefix("RESULT "))
    assert result["benchmark"] == script.stem.removeprefix("bench_")
    assert "ratio" in " ".join(result)
