"""`safe-migrations init`: adopt the tool in an existing Alembic project.

Writes ``tasks.py``, ``environments/*.yml`` and the GitHub workflow (this
repository's own files, shipped in ``scaffold/``), and adapts ``env.py`` to the
connection-sharing pattern of Alembic's cookbook, showing every change as a diff.
It never overwrites a file without ``--force`` and never asks anything.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safe_migrations.core.errors import ConfigError, RefusedError
from safe_migrations.project.flask_layout import (
    adapted_flask_env_py,
    find_flask_app,
    flask_alembic_ini,
    is_multidb,
)
from safe_migrations.project.workflow_file import (
    fitted_workflow,
    python_version,
    repository_root,
)

SCAFFOLD = Path(__file__).parent / "scaffold"
MARKER = 'config.attributes.get("connection")'

TASKS_PY = '''"""Invoke tasks: `invoke --list`. The migration tasks come from safe-migrations."""

from safe_migrations.commands import ns

__all__ = ["ns"]
'''

NAMESPACED = """from safe_migrations.commands import ns as migrations_ns

ns.add_collection(migrations_ns, name="db")  # then: invoke db.migrate --env staging
"""

SYNC_BLOCK = """    connection = config.attributes.get("connection")
    if connection is not None:  # handed in by safe-migrations: its database, its timeouts
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return

"""

ASYNC_BLOCK = """    connection = config.attributes.get("connection")
    if connection is not None:  # handed in by safe-migrations: a sync psycopg2 connection
        do_run_migrations(connection)
        return

"""


@dataclass(frozen=True)
class Change:
    path: Path
    text: str
    why: str
    base: Path | None = None  # the folder it must stay in: the project's, else this


def alembic_settings(root: Path) -> tuple[Path, Path | None]:
    """(alembic.ini or pyproject.toml, pyproject.toml when it holds [tool.alembic])."""
    pyproject = root / "pyproject.toml"
    toml = None
    if pyproject.is_file():
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        toml = pyproject if "alembic" in data.get("tool", {}) else None
    if (root / "alembic.ini").is_file():
        return root / "alembic.ini", toml
    if toml is not None:
        return toml, toml
    raise ConfigError(
        f"{root} has no alembic.ini and no pyproject.toml with [tool.alembic]; run "
        "`safe-migrations init` at the root of an Alembic project (after `alembic init`)."
    )


def script_folder(root: Path, ini: Path, toml: Path | None) -> Path:
    from alembic.config import Config

    config = Config(None if ini == toml else str(ini), toml_file=str(toml) if toml else None)
    location = config.get_main_option("script_location") or "migrations"
    folder = Path(location)
    return folder if folder.is_absolute() else root / folder


def template_of(text: str) -> str:
    """Which `alembic init` template an env.py still follows: generic (and pyproject),
    async (and pyproject_async), multidb, adapted already, or unknown."""
    if MARKER in text:
        return "adapted"
    if "for name, rec in engines.items()" in text or "engines[name]" in text:
        return "multidb"
    if "def do_run_migrations(" in text and "async_engine_from_config" in text:
        return "async"
    if "engine_from_config(" in text and "with connectable.connect() as connection:" in text:
        return "generic"
    return "unknown"


def adapted_env_py(text: str, path: Path = Path("env.py")) -> str | None:
    """env.py with the cookbook block first in ``run_migrations_online``; None when it
    has no such function. ConfigError when it is not valid Python."""
    kind = template_of(text)
    block = ASYNC_BLOCK if kind == "async" else SYNC_BLOCK
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise ConfigError(
            f"{path} is not valid Python (line {exc.lineno}: {exc.msg}); fix it so that "
            "`alembic upgrade` runs, then run `safe-migrations init` again. Nothing was written."
        ) from None
    function = next(
        (
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name == "run_migrations_online"
        ),
        None,
    )
    if function is None:
        return None
    if kind != "async":  # async hands the connection to do_run_migrations: its own configure
        block = SYNC_BLOCK.replace(
            "context.configure(connection=connection, target_metadata=target_metadata)",
            _configure_call(text, function),
        )
    first = function.body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    after = (first.end_lineno or first.lineno) if is_docstring else first.lineno - 1
    lines = text.splitlines(keepends=True)
    return "".join(lines[:after]) + "\n" + block + "".join(lines[after:]).lstrip("\n")


def _configure_call(text: str, function: ast.FunctionDef) -> str:
    """The block's ``context.configure(...)``: the connection handed in, and every other
    argument of the project's own online ``configure()`` call. An argument that uses a
    name the function defines later cannot run this early: it is left out, and said so in
    a comment the diff shows."""
    call = next(
        (
            node
            for node in ast.walk(function)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "configure"
        ),
        None,
    )
    if call is None:
        return "context.configure(connection=connection, target_metadata=target_metadata)"
    local = {
        target.id
        for node in ast.walk(function)
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.FunctionDef | ast.With)
        for target in _bound(node)
    }
    kept: list[str] = ["connection=connection"]
    dropped: list[str] = []
    for keyword in call.keywords:
        if keyword.arg == "connection":
            continue
        source = ast.get_source_segment(text, keyword) or ""
        used = {n.id for n in ast.walk(keyword.value) if isinstance(n, ast.Name)}
        (dropped if used & local else kept).append(source)
    said = "".join(
        f"\n        # not carried over (it uses a name defined later in this function): {d}"
        for d in dropped
    )
    arguments = ",\n            ".join(kept)
    return f"context.configure(\n            {arguments},\n        ){said}"


def _bound(node: ast.AST) -> list[ast.Name]:
    """The plain names an assignment, a nested def or a ``with ... as`` binds."""
    if isinstance(node, ast.FunctionDef):
        return [ast.Name(id=node.name)]
    if isinstance(node, ast.With):
        targets = [item.optional_vars for item in node.items if item.optional_vars]
    elif isinstance(node, ast.Assign):
        targets = list(node.targets)
    else:
        targets = [node.target]  # type: ignore[attr-defined]
    return [n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _alembic_project(root: Path) -> tuple[Path, Path, Path | None]:
    """(settings file, script folder, Flask-Migrate's alembic.ini or None)."""
    try:
        ini, toml = alembic_settings(root)
    except ConfigError:
        flask_ini = flask_alembic_ini(root)  # `flask db init`: alembic.ini in migrations/
        if flask_ini is None:
            raise
        return flask_ini, flask_ini.parent, flask_ini
    return ini, script_folder(root, ini, toml), None


def planned(root: Path) -> tuple[list[Change], list[str], int]:
    """(files to write, messages, exit code): nothing is written here."""
    ini, folder, flask_ini = _alembic_project(root)
    changes: list[Change] = []
    notes: list[str] = []
    code = 0
    own_tasks = (root / "tasks.py").is_file() and (root / "tasks.py").read_text() == TASKS_PY
    if own_tasks:
        pass  # written by an earlier init
    elif (root / "tasks.py").exists() or (root / "tasks" / "__init__.py").exists():
        notes.append(
            "This project has its own tasks; add the migration tasks under a namespace:\n"
            + NAMESPACED
        )
    else:
        changes.append(Change(root / "tasks.py", TASKS_PY, "loads the migration tasks"))
    for source in sorted((SCAFFOLD / "environments").glob("*.yml")):
        text = source.read_text(encoding="utf-8")
        if flask_ini is not None:  # Flask-Migrate sets script_location itself
            where = folder.relative_to(root)
            text += f"alembic:\n  ini: {ini.relative_to(root)}\n  script_location: {where}\n"
        elif ini.name != "alembic.ini":
            text += f"alembic:\n  ini: {ini.relative_to(root)}\n"
        changes.append(Change(root / "environments" / source.name, text, "an environment"))
    repository = repository_root(root)  # the workflow goes where GitHub reads it
    workflow = (SCAFFOLD / "workflows" / "db-migrate.yml").read_text(encoding="utf-8")
    workflow = fitted_workflow(workflow, root, repository)
    target = repository / ".github" / "workflows" / "db-migrate.yml"
    changes.append(Change(target, workflow, "the workflow", repository))
    changes.extend(filter(None, [history_change(root, ini, folder)]))  # the shipped history
    _version, version_note = python_version(root)
    if version_note:
        notes.append(version_note + ".")
    env_py = folder / "env.py"
    text = env_py.read_text(encoding="utf-8") if env_py.is_file() else ""
    kind = template_of(text)
    if flask_ini is not None and kind != "adapted":
        change, said = _flask_env_py(root, env_py, text)
        return [*changes, change], notes + said, code
    if kind == "multidb":
        raise RefusedError(
            f"{env_py} follows Alembic's multidb template, which migrates several "
            "databases in one run; safe-migrations runs one database per environment."
        )
    adapted = adapted_env_py(text, env_py) if kind in ("generic", "async") else None
    if adapted is not None:
        changes.append(Change(env_py, adapted, "takes the connection it is handed"))
    elif kind in ("generic", "async"):
        notes.append(
            f"{env_py} has no run_migrations_online() function, so it was not edited. Define "
            "it (as `alembic init` does) and start it with:\n" + SYNC_BLOCK
        )
        code = 1
    elif kind == "unknown":
        notes.append(
            f"{env_py} matches none of the templates safe-migrations knows, so it was not "
            "edited. Add this at the start of run_migrations_online():\n" + SYNC_BLOCK
        )
        code = 1
    return changes, notes, code


def history_change(root: Path, ini: Path, folder: Path) -> Change | None:
    """The lint baseline of the revisions the project has now, each accepted whole while
    its file is unchanged: shipped before adoption, so neither lint nor the refusals
    hold them to rules they never followed. None: no revisions, or a baseline exists."""
    from alembic.util import CommandError

    from safe_migrations.project.alembic_api import Project
    from safe_migrations.project.baseline import BASELINE_FILE, history_baseline

    path = folder / BASELINE_FILE
    if path.exists():
        return None
    project = Project(ini=ini, script_location=folder)
    try:
        text = history_baseline(project, root, "shipped before adoption")
    except (CommandError, ConfigError, OSError):
        return None  # the scripts cannot be read here; `invoke lint --baseline` later
    if "revision:" not in text:
        return None
    why = "the history shipped before adoption, accepted by lint and the refusals"
    return Change(path, text, why)


def _flask_env_py(root: Path, env_py: Path, text: str) -> tuple[Change, list[str]]:
    """Flask-Migrate's env.py, adapted, and what to tell about it; refused for its
    multidb template."""
    if is_multidb(text):
        raise RefusedError(
            f"{env_py} follows Flask-Migrate's multidb template, which migrates several "
            "databases in one run; safe-migrations runs one database per environment."
        )
    app = find_flask_app(root, env_py.parent)
    adapted = adapted_flask_env_py(text, app)
    if adapted is None:
        raise RefusedError(
            f"{env_py} uses Flask's current_app but not as Flask-Migrate's template does "
            "(no `config = context.config` or no run_migrations_online()); add the block "
            "of the README's env.py contract by hand. Nothing was written."
        )
    said = []
    if app.db_module is None:
        said.append(
            "No `db = SQLAlchemy(...)` was found in this project's modules, so the adapted "
            f"{env_py.relative_to(root)} hands validation no models (driven_metadata() "
            "returns None): import your db object there and return its metadata."
        )
    else:
        modules = ", ".join(app.model_modules) or "none besides it"
        said.append(
            f"The models come from {app.db_module}.{app.db_name} (modules with models: "
            f"{modules}); Flask-Migrate's options carried over: "
            + ", ".join(f"{k}={v}" for k, v in app.options.items())
            + "."
        )
    why = "runs without a Flask application context when the tasks drive it"
    return Change(env_py, adapted, why), said


def inside_project(root: Path, path: Path) -> None:
    """RefusedError unless ``path`` stays inside ``root`` with no symlink on the way: init
    writes only the project's own files, never through a link to somewhere else."""
    base = root.resolve()
    current = path
    while current != root and current != current.parent:
        if current.is_symlink():
            raise RefusedError(
                f"{current} is a symbolic link (to {current.readlink()}); safe-migrations init "
                "never writes through a link. Replace it with a real file or folder, or move "
                "it aside, and run init again. Nothing was written."
            )
        current = current.parent
    resolved = path.resolve()
    if resolved != base and base not in resolved.parents:
        raise RefusedError(
            f"{path} resolves to {resolved}, outside the project {base}; nothing was written."
        )


def _shown(root: Path, path: Path) -> str:
    """A path as the user reads it: from the project, or ../ up to the repository."""
    return os.path.relpath(path, root)


def init(root: Path, force: bool = False, say: Callable[[str], None] = print) -> int:
    """Write the planned files (existing ones only with ``force``), showing each diff."""
    changes, notes, code = planned(root)
    for change in changes:  # every path checked before the first file is written
        inside_project(change.base or root, change.path)
    for change in changes:
        old = change.path.read_text(encoding="utf-8") if change.path.exists() else ""
        if old == change.text:
            continue
        is_env_py = change.path.name == "env.py"
        if old and not force and not is_env_py:
            say(f"kept {_shown(root, change.path)} (exists; --force replaces it)")
            continue
        name = _shown(root, change.path)
        diff = difflib.unified_diff(
            old.splitlines(keepends=True),
            change.text.splitlines(keepends=True),
            fromfile=f"a/{name}" if old else "/dev/null",
            tofile=f"b/{name}",
        )
        say(f"{'updated' if old else 'wrote'} {name}: {change.why}")
        say(re.sub(r"\n+$", "", "".join(diff)))
        change.path.parent.mkdir(parents=True, exist_ok=True)
        change.path.write_text(change.text, encoding="utf-8")
    for note in notes:
        say(note)
    return code
