"""Flask-Migrate projects: `flask db init` puts ``alembic.ini`` inside ``migrations/`` and
writes an ``env.py`` that reads everything from ``current_app``.

``init`` adopts such a project from its root. The adapted ``env.py`` needs no
application context when the tasks drive it (a connection handed in, or SQL rendered
offline for a dialect): the models come from the application's Flask-SQLAlchemy
object, found here by reading the project's modules (nothing is imported or run), and
``flask db ...`` keeps working as before.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLASK_MARKER = "current_app.extensions['migrate']"
SKIPPED = {"__pycache__", "node_modules", "site-packages", "build", "dist", "tests", "test"}
MIGRATE_OWN = {"app", "db", "directory", "command"}  # Migrate()'s own, not configure()'s
DEFAULTS = {"compare_type": "True", "render_as_batch": "True"}  # Flask-Migrate 4's


@dataclass(frozen=True)
class FlaskApp:
    """What the project's modules say: where its ``SQLAlchemy()`` object lives, which
    modules define its models, and the literal options given to ``Migrate()``."""

    db_module: str | None = None
    db_name: str = "db"
    model_modules: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)


def is_flask_env_py(text: str) -> bool:
    return "from flask import current_app" in text and (
        FLASK_MARKER in text or 'current_app.extensions["migrate"]' in text
    )


def is_multidb(text: str) -> bool:
    return "bind_names" in text or "get_engine(bind" in text


def flask_alembic_ini(root: Path) -> Path | None:
    """``<folder>/alembic.ini`` one level down whose env.py is Flask-Migrate's."""
    for ini in sorted(root.glob("*/alembic.ini")):
        env_py = ini.parent / "env.py"
        if env_py.is_file() and is_flask_env_py(env_py.read_text(encoding="utf-8")):
            return ini
    return None


def _modules(root: Path, skip: Path) -> list[tuple[str, ast.Module]]:
    """(dotted name, parsed tree) of the project's own modules: no venv, no migrations."""
    found: list[tuple[str, ast.Module]] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        parents = [root.joinpath(*relative.parts[:i]) for i in range(1, len(relative.parts))]
        if any(part.startswith(".") or part in SKIPPED for part in relative.parts[:-1]) or any(
            p == skip or (p / "pyvenv.cfg").exists() for p in parents
        ):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[0] == "src" and len(parts) > 1:
            parts = parts[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found.append((".".join(parts), tree))
    return found


def _called(node: ast.AST, name: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == name) or (
        isinstance(func, ast.Attribute) and func.attr == name
    )


def find_flask_app(root: Path, migrations: Path) -> FlaskApp:
    """The application's ``db = SQLAlchemy(...)``, its models' modules and the literal
    keyword arguments of ``Migrate(...)`` / ``migrate.init_app(...)``."""
    modules = _modules(root, migrations)
    db_module, db_name = None, "db"
    for name, tree in modules:
        for node in tree.body:
            if isinstance(node, ast.Assign) and _called(node.value, "SQLAlchemy"):
                target = node.targets[0]
                if isinstance(target, ast.Name) and db_module is None:
                    db_module, db_name = name, target.id
    models = tuple(
        name
        for name, tree in modules
        if name != db_module
        and any(
            isinstance(node, ast.ClassDef)
            and any(
                isinstance(base, ast.Attribute)
                and base.attr == "Model"
                and isinstance(base.value, ast.Name)
                and base.value.id == db_name
                for base in node.bases
            )
            for node in ast.walk(tree)
        )
    )
    options = dict(DEFAULTS)
    calls = [
        call
        for _name, tree in modules
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and (_called(call, "Migrate") or (_called(call, "init_app") and _is_migrate(call)))
    ]
    for call in calls:
        for keyword in call.keywords:
            if keyword.arg and keyword.arg not in MIGRATE_OWN:
                try:
                    ast.literal_eval(keyword.value)
                except ValueError:
                    continue  # not a literal: cannot be written into env.py
                options[keyword.arg] = ast.unparse(keyword.value)
    return FlaskApp(db_module, db_name, models, options)


def _is_migrate(call: Any) -> bool:
    """``migrate.init_app(app, db, ...)``: on a name that says migrate."""
    value = call.func.value if isinstance(call.func, ast.Attribute) else None
    return isinstance(value, ast.Name) and "migrate" in value.id.lower()


def _prelude(app: FlaskApp) -> str:
    head = (
        "\n# safe-migrations: when its tasks drive this file (a connection handed in, or SQL\n"
        "# rendered offline for a dialect) no Flask application context is needed: the\n"
        "# models come from the application's Flask-SQLAlchemy object, imported.\n"
        'DRIVEN = config.attributes.get("connection") is not None or bool(\n'
        '    config.attributes.get("dialect_name")\n'
        ")\n\n\n"
        "def driven_metadata():\n"
    )
    if app.db_module is None:
        return head + (
            "    # safe-migrations init found no `db = SQLAlchemy(...)` in this project:\n"
            "    # import yours here and return its metadata, or validation compares nothing.\n"
            "    return None\n\n"
        )
    lines = [f"    from {app.db_module} import {app.db_name}  # found by safe-migrations init\n"]
    lines += [
        f"    import {module}  # noqa: F401  (its models' tables)\n" for module in app.model_modules
    ]
    return head + "".join(lines) + f"\n    return {app.db_name}.metadata\n\n"


def adapted_flask_env_py(text: str, app: FlaskApp) -> str | None:
    """Flask-Migrate's env.py, driven-safe: its module-level ``current_app`` statements
    skipped when DRIVEN, ``get_metadata()`` and the online run using the handed-in
    connection and the imported models. None when the file is not the template."""
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, str]] = []  # (first line index, end index, replacement)
    config_line = next(
        (
            node.end_lineno
            for node in tree.body
            if isinstance(node, ast.Assign)
            and ast.unparse(node.value) == "context.config"
            and node.end_lineno is not None
        ),
        None,
    )
    online = _function(tree, "run_migrations_online")
    if config_line is None or online is None:
        return None
    edits.append((config_line, config_line, _prelude(app)))
    needs_app = _needing_app(tree)
    group: list[ast.stmt] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.Import | ast.ImportFrom | ast.If) and (
            _names(node) & needs_app
        ):
            group.append(node)
            continue
        if group:
            edits.append(_guarded(lines, group))
            group = []
    metadata = _function(tree, "get_metadata")
    if metadata is not None:
        edits.append(_at_start(metadata, "    if DRIVEN:\n        return driven_metadata()\n"))
    arguments = "".join(f"            {key}={value},\n" for key, value in app.options.items())
    edits.append(
        _at_start(
            online,
            '    connection = config.attributes.get("connection")\n'
            "    if connection is not None:  # handed in by safe-migrations: its database\n"
            "        context.configure(\n"
            "            connection=connection,\n"
            "            target_metadata=driven_metadata(),\n"
            f"{arguments}"
            "        )\n"
            "        with context.begin_transaction():\n"
            "            context.run_migrations()\n"
            "        return\n",
        )
    )
    for start, end, replacement in sorted(edits, reverse=True):
        lines[start:end] = [replacement]
    return "".join(lines)


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _needing_app(tree: ast.Module) -> set[str]:
    """``current_app`` and the module's functions that reach it, directly or through
    another (``get_engine_url`` calls ``get_engine``, which reads ``current_app``)."""
    functions = {n.name: _names(n) for n in tree.body if isinstance(n, ast.FunctionDef)}
    needing = {"current_app"}
    while True:
        more = {name for name, used in functions.items() if used & needing} - needing
        if not more:
            return needing
        needing |= more


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _at_start(function: ast.FunctionDef, block: str) -> tuple[int, int, str]:
    """Insert ``block`` as the function's first statement (after its docstring)."""
    first = function.body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    at = (first.end_lineno or first.lineno) if is_docstring else first.lineno - 1
    return (at, at, ("\n" if is_docstring else "") + block + ("" if is_docstring else "\n"))


def _guarded(lines: list[str], group: list[ast.stmt]) -> tuple[int, int, str]:
    """Consecutive module-level statements that need the application, run only when not
    DRIVEN; the names they bind get a stand-in otherwise."""
    start, end = group[0].lineno - 1, group[-1].end_lineno or group[-1].lineno
    body = "".join("    " + line if line.strip() else line for line in lines[start:end])
    names = [
        target.id
        for node in group
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]
    other = "".join(
        f"    {name} = {'driven_metadata()' if name == 'target_metadata' else 'None'}\n"
        for name in names
    )
    return (start, end, "if not DRIVEN:\n" + body + (f"else:\n{other}" if other else ""))
