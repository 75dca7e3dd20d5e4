"""The package's import graph, built from the source: no module imports one that imports
it back, directly or around a loop, counting every import (lazy, and those made for
type checking only), so the layers stay layers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tasks" / "safe_migrations"
NAME = "safe_migrations"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module (dotted, below the package) -> the package's modules it imports."""
    paths = [p for p in PACKAGE.rglob("*.py") if "scaffold" not in p.parts]
    modules = {_module(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == NAME:
                    found |= {alias.name for alias in node.names if alias.name in modules}
                elif node.module.startswith(NAME + "."):
                    target = node.module[len(NAME) + 1 :]
                    found.add(target)
                    found |= {f"{target}.{a.name}" for a in node.names} & modules
            elif isinstance(node, ast.Import):
                found |= {
                    alias.name[len(NAME) + 1 :]
                    for alias in node.names
                    if alias.name.startswith(NAME + ".")
                }
        graph[_module(path)] = found & modules - {_module(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    migrate, postgresql = graph["pipeline.migrate"], graph["engines.postgresql"]
    assert len(graph) > 40 and "core.config" in migrate and "core.database" in postgresql
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_loop_and_only_a_loop() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


ENGINE_BRANCH = re.compile(
    r"is_sqlite|is_mysql|dialect\s*[!=]=|dialect\s+(not\s+)?in\b|storage\.type\s*[!=]="
    r"|[!=]=\s*[\"'](postgresql|mysql|mariadb|sqlite|local|s3)[\"']"
    r"|[\"'](postgresql|mysql|mariadb|sqlite|local|s3)[\"']\s*[!=]="
)


def test_no_engine_or_store_branch_outside_the_engines_and_the_configuration_parser() -> None:
    """What differs by database is asked of the engine, what differs by store of the
    store: the steps and operations hold no comparison of a dialect or a store type."""
    allowed = {PACKAGE / "core" / "config.py"}
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "engines" not in path.relative_to(PACKAGE).parts[:1] and path not in allowed
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if ENGINE_BRANCH.search(line)
    ]
    assert found == []
    assert ENGINE_BRANCH.search('if env.dialect == "mysql":')  # the pattern finds one
    assert ENGINE_BRANCH.search('if settings.backup.storage.type == "s3":')


def test_a_long_module_or_function_says_why_in_its_docstring() -> None:
    """Over 400 lines a module, over 60 a function, states the reason ("Kept long: ...")."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(PACKAGE)
        if (tree.body[-1].end_lineno or 0) > 400 and "Kept long:" not in (
            ast.get_docstring(tree) or ""
        ):
            unexplained.append(str(where))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60 and "Kept long:" not in (ast.get_docstring(node) or ""):
                    unexplained.append(f"{where}:{node.name} ({length} lines)")
    assert unexplained == []


def test_a_fourth_engine_registered_in_its_own_module_runs_status(tmp_path: Path) -> None:
    """An engine for a test dialect (SQLite underneath, under another name): registering
    it is all it takes for `status` to connect, lock-free, and read the revision."""
    import sqlite3

    from helpers import write_environment
    from sqlalchemy.dialects import registry

    from safe_migrations import engines
    from safe_migrations.core.config import load_environment
    from safe_migrations.engines.sqlite import SQLite
    from safe_migrations.pipeline.status import get_status
    from safe_migrations.project.alembic_api import DEFAULT_PROJECT

    class FakeSQL(SQLite):
        name = "FakeSQL"

    registry.register("fakesql", "sqlalchemy.dialects.sqlite.pysqlite", "SQLiteDialect_pysqlite")
    engines.register("fakesql", FakeSQL)
    try:
        write_environment(tmp_path / "environments", "fake", tmp_path / "var")
        env = load_environment(
            "fake",
            environ={"DATABASE_URL": f"fakesql:///{tmp_path / 'fake.db'}"},
            directory=tmp_path / "environments",
        )
        assert env.dialect == "fakesql"
        assert get_status(env, DEFAULT_PROJECT).current is None
        with sqlite3.connect(tmp_path / "fake.db") as connection:  # as Alembic stamps it
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
            connection.execute("INSERT INTO alembic_version VALUES ('0001')")
        found = get_status(env, DEFAULT_PROJECT)
        assert found.current == "0001" and found.pending
    finally:
        engines.unregister("fakesql")


def test_an_engine_nobody_registered_is_one_sentence() -> None:
    import pytest

    from safe_migrations.core.errors import ConfigError
    from safe_migrations.engines import engine_for

    with pytest.raises(ConfigError, match="No engine serves the database dialect 'oracle'"):
        engine_for("oracle")
