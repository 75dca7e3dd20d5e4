"""A project made by `flask db init` (Flask-Migrate from PyPI), adopted by `init` at its
root: files at the root, env.py working without an application context when the tasks
drive it, the models read from the application's db object (issue 34)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from helpers import table_names
from projects import run, with_secrets

from safe_migrations.project.adopt import planned

BIN = Path(sys.executable).parent

INIT = """import os

from flask import Flask

from myapp.extensions import db, migrate


def create_app():
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["APP_DATABASE_URL"]
    db.init_app(app)
    migrate.init_app(app, db, compare_server_default=True)
    from myapp import models  # noqa: F401

    return app
"""

EXTENSIONS = """from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

db = SQLAlchemy()
migrate = Migrate()
"""

MODELS = """from myapp.extensions import db


class User(db.Model):
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)
"""


def flask_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A factory-style Flask application with one model and one revision made by
    `flask db migrate` against the application's own SQLite database."""
    project = tmp_path / "webapp"
    (project / "myapp").mkdir(parents=True)
    (project / "myapp" / "__init__.py").write_text(INIT)
    (project / "myapp" / "extensions.py").write_text(EXTENSIONS)
    (project / "myapp" / "models.py").write_text(MODELS)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MIGRATE_"))}
    base |= {"FLASK_APP": "myapp:create_app", "APP_DATABASE_URL": f"sqlite:///{tmp_path}/dev.db"}
    for argv in (("db", "init"), ("db", "migrate", "-m", "users")):
        made = run(project, str(BIN / "flask"), *argv, env=base)
        assert made.returncode == 0, made.stdout + made.stderr
    return project, base


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_a_flask_migrate_project_is_adopted_at_its_root_and_migrates_sqlite_and_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    project, base = flask_project(tmp_path)
    before = _files(project / "migrations")
    adopted = run(project, str(BIN / "safe-migrations"), "init", env=base)
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    for written in ("tasks.py", "environments/staging.yml", ".github/workflows/db-migrate.yml"):
        assert (project / written).is_file(), written
    # Nothing new inside migrations/ but the baseline of the history shipped before adoption.
    assert _files(project / "migrations") == before | {"lint-baseline.yml"}
    assert "shipped before adoption" in (project / "migrations" / "lint-baseline.yml").read_text()
    assert "ini: migrations/alembic.ini" in (project / "environments" / "local.yml").read_text()
    assert "myapp.extensions.db" in adopted.stdout and "myapp.models" in adopted.stdout
    assert "compare_server_default=True" in adopted.stdout  # Migrate()'s option, carried

    # No FLASK_APP, no application database: the tasks need no application context.
    driven = {k: v for k, v in base.items() if k not in ("FLASK_APP", "APP_DATABASE_URL")}
    local = run(project, str(BIN / "invoke"), "migrate", "--yes", env=driven)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "schema matches the models" in local.stdout
    assert table_names(f"sqlite:///{project / 'var' / 'local.db'}") == {"alembic_version", "user"}
    staging = run(
        project,
        str(BIN / "invoke"),
        "migrate",
        "--env",
        "staging",
        "--yes",
        env=with_secrets(driven, pg_url),
    )
    assert staging.returncode == 0, staging.stdout + staging.stderr
    assert table_names(pg_url) == {"alembic_version", "user"}
    assert not (tmp_path / "dev.db").exists() or "user" not in table_names(
        f"sqlite:///{tmp_path}/dev.db"
    )

    # The models validated are the application's: a column added to them is drift.
    models = project / "myapp" / "models.py"
    models.write_text(MODELS + "    email = db.Column(db.String(120))\n")
    drift = run(project, str(BIN / "invoke"), "check", env=driven)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    assert "add_column user.email" in drift.stdout
    models.write_text(MODELS)

    # And `flask db upgrade` still works as before, on the application's own database.
    upgraded = run(project, str(BIN / "flask"), "db", "upgrade", env=base)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert table_names(f"sqlite:///{tmp_path}/dev.db") == {"alembic_version", "user"}


def test_without_a_db_object_init_says_plainly_what_validation_will_miss(tmp_path: Path) -> None:
    project, base = flask_project(tmp_path)
    (project / "myapp" / "extensions.py").write_text(
        EXTENSIONS.replace("db = SQLAlchemy()", "db = make_db()").replace(
            "from flask_sqlalchemy import SQLAlchemy", "from myapp.factory import make_db"
        )
    )
    changes, notes, code = planned(project)
    assert code == 0
    assert any("No `db = SQLAlchemy(...)` was found" in note for note in notes)
    env_py = next(c for c in changes if c.path.name == "env.py").text
    assert "    return None\n" in env_py and "found by safe-migrations init" not in env_py
