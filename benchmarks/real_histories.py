"""Real open-source Alembic histories, adopted as README says, cycled under the shipped
``staging`` file on PostgreSQL: up from empty, rows added, down a few, up again.

Not a ``bench_`` script (the suite smoke-runs those): it needs each project's source,
which CI cannot fetch. Bring each checkout onto the machine first (a git directory, as
``git clone --mirror`` or the tool library's ``fetch`` makes one), then:

    python benchmarks/real_histories.py --mirrors /work/.mirror [--only microblog]

For each project of ``HISTORIES`` the script exports the named commit to a scratch
folder, makes a virtualenv with the project's own dependencies and this package
(``pip install -e``, the README's first adoption step), runs ``safe-migrations init``
(the second), and then, with the staging file's ``DB_*`` variables on a fresh database:
``invoke migrate --env staging --yes``; the project's seed rows (so the rewrites meet
tables with rows, as on a real staging); ``invoke downgrade --env staging --revision
-N --yes``; ``invoke migrate --env staging --yes``. It prints each step's exit code and
what the report says was rewritten, and ``RESULT`` with the counts. ``changed`` says
what had to change on the project's side: anything beyond README's two steps is a
defect of ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, create_database, drop_database, finish, postgres  # noqa: E402

HISTORIES: dict[str, dict[str, Any]] = {
    # Flask-Migrate with render_as_batch=True: every revision in batch_alter_table.
    "microblog": {
        "repository": "miguelgrinberg/microblog",
        "commit": "a975ef6",
        "folder": ".",
        "install": [["-r", "requirements.txt"]],
        "app": {},
        "seed": (
            "INSERT INTO \"user\" (username, email, password_hash) SELECT 'u' || i, "
            "'e' || i, 'h' FROM generate_series(1, 200000) i; "
            "INSERT INTO post (body, timestamp, user_id, language) SELECT 'b', now(), "
            "1 + i % 200000, 'en' FROM generate_series(1, 300000) i; ANALYZE"
        ),
        "down": 3,
        "changed": "nothing",
    },
    # SQLModel, UUID keys; its history converts integer keys to UUIDs with UPDATEs,
    # type changes and dropped columns: shipped long ago, baselined by init.
    "full-stack-fastapi-template": {
        "repository": "fastapi/full-stack-fastapi-template",
        "commit": "f459c20a",  # the newest commit whose backend installs on Python 3.11
        "folder": "backend",
        "install": [["-e", "."]],
        "app": {},  # the project's own ../.env supplies its settings
        "seed": (
            'INSERT INTO "user" (email, is_active, is_superuser, full_name, '
            "hashed_password, id) SELECT 'e' || i || '@example.org', true, false, 'n', 'h', "
            "gen_random_uuid() FROM generate_series(1, 50000) i; "
            "INSERT INTO item (title, description, id, owner_id) SELECT 't', 'd', "
            'gen_random_uuid(), (SELECT id FROM "user" LIMIT 1) FROM generate_series(1, '
            "50000); ANALYZE"
        ),
        "down": 3,
        "changed": "nothing",
    },
}


def sh(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> Any:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def prepared(name: str, spec: dict[str, Any], mirrors: Path, work: Path) -> tuple[Path, Path]:
    """(the project's folder with alembic.ini, its virtualenv's bin), after README's two
    adoption steps."""
    git = mirrors / spec["repository"].replace("/", "+") / "repo"
    source = work / name
    source.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(git), "archive", spec["commit"]], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    folder = source / spec["folder"]
    venv = work / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q"]
    for extra in [*spec["install"], ["-e", str(ROOT)]]:
        done = sh(pip + extra, folder, dict(os.environ))
        if done.returncode:
            raise SystemExit(f"{name}: pip install {' '.join(extra)} failed: {done.stderr[-800:]}")
    env = dict(os.environ) | {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    init = sh(["safe-migrations", "init"], folder, env)
    if init.returncode:
        raise SystemExit(f"{name}: safe-migrations init exited {init.returncode}: {init.stdout}")
    return folder, venv / "bin"


def cycle(name: str, spec: dict[str, Any], folder: Path, bin_dir: Path, admin: str) -> dict:
    """Up, seed, down N, up: each step's exit code and what was rewritten."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = create_database(admin, "history")
    parts = make_url(url)
    env = (
        dict(os.environ)
        | {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "DB_USER": str(parts.username),
            "DB_PASSWORD": str(parts.password or ""),
            "DB_HOST": str(parts.host),
            "DB_PORT": str(parts.port or 5432),
            "DB_NAME": str(parts.database),
        }
        | spec["app"]
    )
    steps: list[dict[str, Any]] = []
    try:
        for label, argv in (
            ("up", ["invoke", "migrate", "--env", "staging", "--yes"]),
            ("seed", None),
            ("down", ["invoke", "downgrade", "--env", "staging", "--revision", f"-{spec['down']}"]),
            ("up again", ["invoke", "migrate", "--env", "staging", "--yes"]),
        ):
            began = time.perf_counter()
            if argv is None:
                engine = create_engine(url, poolclass=NullPool)
                with engine.begin() as connection:
                    connection.execute(text(spec["seed"]))
                engine.dispose()
                steps.append({"step": label, "code": 0, "seconds": 0.0})
                continue
            if label == "down":
                argv = [*argv, "--yes"]
            done = sh(argv, folder, env)
            steps.append(
                {
                    "step": label,
                    "code": done.returncode,
                    "seconds": round(time.perf_counter() - began, 2),
                    "rewritten": rewritten(folder),
                    "said": "" if done.returncode == 0 else (done.stderr or done.stdout)[-600:],
                }
            )
            if done.returncode:
                break
    finally:
        drop_database(admin, url)
    return {"project": name, "steps": steps, "changed": spec["changed"]}


def rewritten(folder: Path) -> list[str]:
    """What the newest report says each revision ran in its non-blocking form."""
    reports = sorted(
        (folder / "var" / "reports" / "staging").glob("staging-*.json"),
        key=lambda p: p.stat().st_mtime,
    )
    if not reports:
        return []
    record = json.loads(reports[-1].read_text())
    return [
        f"{applied['revision']}: {r['operation']} {r['target']}"
        for applied in record.get("applied", [])
        for r in applied.get("rewritten") or []
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirrors", type=Path, required=True, help="folder of owner+name/repo")
    parser.add_argument("--only", default="", help="one project of HISTORIES")
    options = parser.parse_args()
    chosen = {k: v for k, v in HISTORIES.items() if not options.only or k == options.only}
    results = []
    with postgres() as admin, tempfile.TemporaryDirectory() as scratch:
        for name, spec in chosen.items():
            folder, bin_dir = prepared(name, spec, options.mirrors, Path(scratch))
            result = cycle(name, spec, folder, bin_dir, admin)
            results.append(result)
            for step in result["steps"]:
                print(f"{name:30} {step['step']:9} exit {step['code']} {step['seconds']:6.2f}s")
                for line in step.get("rewritten", []):
                    print(f"{'':30}   rewritten {line}")
                if step.get("said"):
                    print(f"{'':30}   {step['said']}")
            print(f"{name:30} changed on the project's side: {result['changed']}")
    passed = sum(all(s["code"] == 0 for s in r["steps"]) and len(r["steps"]) == 4 for r in results)
    finish("real_histories", {"projects": len(results), "passed": passed, "ratio": None})


if __name__ == "__main__":
    main()
