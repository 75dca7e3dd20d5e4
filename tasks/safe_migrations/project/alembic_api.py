"""Alembic through its Python API, in process: config, revisions, current state, offline SQL.

Nothing here runs the ``alembic`` executable; the tasks own connections and
hand them to ``migrations/env.py`` through ``config.attributes``.

Kept long: it is the one seam to Alembic's API (config, scripts, env.py runs, offline
SQL); keeping every call into Alembic here is what lets the rest not depend on Alembic's
internals.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safe_migrations.core.config import PROJECT_ROOT
from safe_migrations.core.errors import ConfigError, first_line

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory
    from sqlalchemy.engine import Connection

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


@dataclass(frozen=True)
class Revision:
    """What the tasks show of one revision script."""

    revision: str
    down_revision: str | None
    message: str
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "down_revision": self.down_revision,
            "message": self.message,
            "path": self.path,
        }


class EnvPyContractError(ConfigError):
    """A project's env.py would not use the connection the tasks hand it."""


ENV_PY_LINES = """    connection = config.attributes.get("connection")
    if connection is not None:  # handed in by safe-migrations: its timeouts, its database
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return"""


def run_env_on(
    cfg: Config,
    connection: Any,
    direction: str,
    target: str | None,
    forced: dict[str, Any],
    on_context: Callable[[Any], None] | None = None,
) -> None:
    """``alembic upgrade``/``downgrade`` in process, holding env.py to the contract.

    env.py must configure the context with the connection in
    ``config.attributes["connection"]`` (Alembic's connection-sharing cookbook
    pattern); any other connection, or a failure before configuring, stops the run
    before its first statement (exit 2). ``forced`` options (one transaction per
    revision, the callbacks that record applied revisions) apply whatever env.py
    passes to ``context.configure``; ``on_context`` is handed the MigrationContext.

    Kept long: Alembic's global ``context`` and ``op`` proxies are set up and torn down
    around one env.py run; the set-up and tear-down must stay in one try/finally.
    """
    from alembic.runtime.environment import EnvironmentContext

    script = script_directory(cfg)
    env_py = Path(script.dir) / "env.py"
    configured: list[bool] = []

    def refuse(reason: str) -> EnvPyContractError:
        return EnvPyContractError(
            f"{env_py} {reason}; nothing was run. The tasks run migrations only on the "
            "connection they hand in (their database, timeouts and transactions): in "
            "run_migrations_online(), before anything else, add\n" + ENV_PY_LINES
        )

    def configure(connection: Any = None, **options: Any) -> None:
        handed = cfg.attributes.get("connection")
        same = connection is not None and (
            connection is handed
            or getattr(connection, "connection", None) is getattr(handed, "connection", False)
        )
        if not same:
            raise refuse("configured Alembic with a connection of its own")
        callbacks = options.get("on_version_apply") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        options.update(forced)
        ours = forced["on_version_apply"]
        options["on_version_apply"] = [*(c for c in callbacks if c is not ours), ours]
        configured.append(True)
        EnvironmentContext.configure(guarded, connection=connection, **options)
        if on_context is not None:
            on_context(guarded.get_context())

    def step(rev: Any, _context: Any) -> Any:
        if direction == "upgrade":
            return script._upgrade_revs(target or "head", rev)
        return script._downgrade_revs(target or "base", rev)

    destination = target or ("head" if direction == "upgrade" else "base")
    guarded = EnvironmentContext(cfg, script, fn=step, as_sql=False, destination_rev=destination)
    guarded.configure = configure  # type: ignore[method-assign,assignment] # env.py calls this
    with guarded:
        try:
            script.run_env()
        except EnvPyContractError:
            raise
        except Exception as exc:
            if not configured:
                raise _failed_early(env_py, exc, refuse) from exc
            raise
    if not configured:
        raise refuse("never configured Alembic with the connection it was handed")


def _failed_early(
    env_py: Path, exc: BaseException, refuse: Callable[[str], EnvPyContractError]
) -> EnvPyContractError:
    """env.py raised before configuring Alembic: an import that failed names the module
    and where it was looked for; the contract's lines are asked for only when missing."""
    import sys

    if isinstance(exc, ImportError) and exc.name:
        searched = ", ".join(p or "." for p in sys.path[:4])
        return EnvPyContractError(
            f"{env_py} could not import {exc.name} ({first_line(exc)}); it was looked for "
            f"in {searched}, ...: run the tasks from the project's root folder, or install "
            "that package into this environment. Nothing was run."
        )
    try:
        lines_there = 'attributes.get("connection")' in env_py.read_text(encoding="utf-8")
    except OSError:
        lines_there = False
    if lines_there:
        return EnvPyContractError(
            f"{env_py} failed before configuring Alembic ({first_line(exc)}); nothing was run."
        )
    return refuse(f"failed before configuring Alembic ({first_line(exc)})")


class _Configured(Exception):
    """Raised inside env.py's context.configure once its options are known."""


# What `alembic check` compares with, as the project's env.py configures it.
COMPARE_OPTIONS = (
    "include_object",
    "include_name",
    "include_schemas",
    "compare_type",
    "compare_server_default",
)


def configured_comparison(cfg: Config, connection: Any) -> tuple[Any, dict[str, Any]]:
    """Run the project's env.py just far enough to see what it passes to
    ``context.configure``: the ``target_metadata`` and the compare options (COMPARE_OPTIONS)
    that `alembic check` honours; nothing is executed."""
    from alembic.runtime.environment import EnvironmentContext

    script = script_directory(cfg)
    seen: dict[str, Any] = {}

    def configure(connection: Any = None, **options: Any) -> None:
        seen["metadata"] = options.get("target_metadata")
        seen["options"] = {k: options[k] for k in COMPARE_OPTIONS if k in options}
        raise _Configured

    probe = EnvironmentContext(cfg, script, fn=lambda _rev, _ctx: [], as_sql=False)
    probe.configure = configure  # type: ignore[method-assign,assignment] # env.py calls this
    with probe:
        try:
            script.run_env()
        except _Configured:
            pass
        except Exception as exc:
            raise EnvPyContractError(
                f"{Path(script.dir) / 'env.py'} failed before configuring Alembic "
                f"({first_line(exc)}), so its target_metadata cannot be read."
            ) from exc
    return seen.get("metadata"), seen.get("options", {})


def alembic_config(
    ini: Path = ALEMBIC_INI, script_location: Path | None = None, **attributes: Any
) -> Config:
    """An Alembic Config that leaves logging alone; ``attributes`` reach env.py.

    ``ini`` is an alembic.ini or a pyproject.toml; a pyproject.toml beside an
    alembic.ini is read too when it holds ``[tool.alembic]``, as Alembic does.
    """
    import tomllib

    from alembic.config import Config

    if ini.suffix == ".toml":
        cfg = Config(toml_file=str(ini))
    else:
        pyproject = ini.with_name("pyproject.toml")
        has_tool = pyproject.is_file() and "alembic" in tomllib.loads(
            pyproject.read_text(encoding="utf-8")
        ).get("tool", {})
        cfg = Config(str(ini), toml_file=str(pyproject) if has_tool else None)
    if script_location is not None:
        cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["configure_logger"] = False
    cfg.attributes.update(attributes)
    return cfg


_SCRIPT_CACHE: dict[tuple[Any, ...], ScriptDirectory] = {}


def script_directory(cfg: Config) -> ScriptDirectory:
    """The scripts, loaded once per state of their files (a run asks many times)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(cfg)
    folders = getattr(scripts, "version_locations", None) or [scripts.versions]
    key = (scripts.dir, tuple(state for f in folders for state in _file_states(f)))
    if key not in _SCRIPT_CACHE:
        _SCRIPT_CACHE.clear()
        _SCRIPT_CACHE[key] = scripts
    return _SCRIPT_CACHE[key]


def _file_states(folder: str) -> list[tuple[str, int, int]]:
    """Name, mtime and size of each revision file: any edit changes the key. A run
    asks a dozen times: one directory read each (a Path per file and sorting Paths
    took 3.6 ms a time on 400 revisions, this 0.9)."""
    states = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.endswith(".py"):
                    stat = entry.stat()
                    states.append((entry.name, stat.st_mtime_ns, stat.st_size))
    except FileNotFoundError:  # a version location not made yet holds no revision
        return []
    states.sort()
    return states


def describe(script: Script) -> Revision:
    down = script.down_revision
    if isinstance(down, (tuple, list)):
        down = ",".join(down)
    return Revision(
        revision=script.revision,
        down_revision=down,
        message=(script.doc or "").strip(),
        path=str(Path(script.path).resolve().relative_to(PROJECT_ROOT))
        if Path(script.path).resolve().is_relative_to(PROJECT_ROOT)
        else script.path,
    )


def heads(scripts: ScriptDirectory) -> list[str]:
    return list(scripts.get_heads())


def history(scripts: ScriptDirectory) -> list[Revision]:
    """Every revision, oldest first."""
    return [describe(s) for s in reversed(list(scripts.walk_revisions()))]


def current_revision(connection: Connection) -> str | None:
    """The revision in ``alembic_version``; None when the table is absent or empty.

    Plain SQL, as Alembic's MigrationContext reads it, so status and backup need not
    import Alembic's runtime.
    """
    from sqlalchemy import inspect, text

    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if not rows:
        return None
    return ",".join(sorted(rows))


def upgrade_path(
    scripts: ScriptDirectory, current: str | None, target: str | None
) -> list[Revision]:
    """Revisions that an upgrade from ``current`` to ``target`` applies, in order."""
    if target is None or target == current:
        return []
    ancestors = {s.revision for s in scripts.iterate_revisions(target, "base")}
    if current is not None and current not in ancestors:
        return []
    steps = list(scripts.iterate_revisions(target, current or "base"))
    return [describe(s) for s in reversed(steps) if s.revision != current]


def downgrade_path(
    scripts: ScriptDirectory, current: str | None, target: str | None
) -> list[Revision]:
    """Revisions that a downgrade from ``current`` to ``target`` undoes, newest first."""
    if current is None or target == current:
        return []
    steps = list(scripts.iterate_revisions(current, target or "base"))
    return [describe(s) for s in steps if s.revision != target]


def is_ancestor(scripts: ScriptDirectory, older: str | None, newer: str | None) -> bool:
    if older is None:
        return True
    if newer is None:
        return False
    return older in {s.revision for s in scripts.iterate_revisions(newer, "base")}


@dataclass(frozen=True)
class RenderedRevision:
    """The offline SQL of one revision, or why it could not be rendered."""

    revision: str
    message: str
    path: str
    sql: str | None
    error: str | None


@contextmanager
def _captured(cfg: Config) -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    previous = cfg.output_buffer
    cfg.output_buffer = buffer
    try:
        yield buffer
    finally:
        cfg.output_buffer = previous


def render_sql(
    cfg: Config,
    scripts: ScriptDirectory,
    path: list[Revision],
    dialect: str,
    upgrade: bool = True,
) -> list[RenderedRevision]:
    """Offline SQL one revision at a time, so one that reads rows cannot hide the others.

    Rendered for ``dialect`` (the environment's): whatever URL env.py would configure
    offline (the stock template's ``driver://`` placeholder in alembic.ini included)
    is replaced by the dialect's name, so no URL is needed and none is connected to.
    """
    rendered = []
    cfg.attributes["dialect_name"] = dialect  # this repository's env.py reads it
    for step in path:
        if upgrade:
            start, destination = step.down_revision or "base", step.revision
        else:
            start, destination = step.revision, step.down_revision or "base"
        with _captured(cfg) as buffer:
            try:
                _run_offline(cfg, scripts, start, destination, upgrade, dialect)
            except Exception as exc:  # noqa: BLE001 - any error in user code means "cannot render"
                rendered.append(
                    RenderedRevision(
                        step.revision, step.message, step.path, None, f"{type(exc).__name__}: {exc}"
                    )
                )
                continue
        rendered.append(
            RenderedRevision(step.revision, step.message, step.path, buffer.getvalue(), None)
        )
    return rendered


def _run_offline(
    cfg: Config,
    script: ScriptDirectory,
    start: str,
    destination: str,
    upgrade: bool,
    dialect: str,
) -> None:
    """``alembic upgrade/downgrade START:DESTINATION --sql`` with env.py's offline
    ``context.configure`` held to ``dialect``."""
    from alembic.runtime.environment import EnvironmentContext

    def step(rev: Any, _context: Any) -> Any:
        if upgrade:
            return script._upgrade_revs(destination, rev)
        return script._downgrade_revs(destination, rev)

    offline = EnvironmentContext(
        cfg, script, fn=step, as_sql=True, starting_rev=start, destination_rev=destination
    )

    def configure(**options: Any) -> None:
        for key in ("url", "connection", "dialect_name"):
            options.pop(key, None)
        EnvironmentContext.configure(offline, dialect_name=dialect, **options)

    offline.configure = configure  # type: ignore[method-assign,assignment] # env.py calls this
    with offline:
        script.run_env()


@dataclass(frozen=True)
class Project:
    """Where the migrations live: an ``alembic.ini`` and, optionally, another script folder.

    ``attributes`` reach ``migrations/env.py``; tests use them to hand in models.
    """

    ini: Path = ALEMBIC_INI
    script_location: Path | None = None
    attributes: tuple[tuple[str, Any], ...] = ()

    def config(self, **attributes: Any) -> Config:
        return alembic_config(self.ini, self.script_location, **dict(self.attributes), **attributes)

    def scripts(self) -> ScriptDirectory:
        return script_directory(self.config())

    def comparison(self, connection: Any) -> tuple[Any, dict[str, Any]]:
        """(models, compare options) as `alembic check` would use them: env.py's own
        ``include_object``, ``compare_type``, ...; models handed in take precedence."""
        metadata, options = configured_comparison(self.config(connection=connection), connection)
        given = dict(self.attributes)
        return given.get("target_metadata", metadata), options


DEFAULT_PROJECT = Project()


def project_for(env: Any) -> Project:
    """The Alembic project an environment names (default: this repository's)."""
    settings = env.settings.alembic
    ini = env.resolve(settings.ini)
    if not ini.is_file():
        raise ConfigError(
            f"{env.path.name}: alembic.ini '{settings.ini}' does not exist; "
            "fix alembic.ini in the environment file."
        )
    location = env.resolve(settings.script_location) if settings.script_location else None
    if location is not None and not (location / "env.py").is_file():
        raise ConfigError(
            f"{env.path.name}: alembic.script_location '{settings.script_location}' "
            "has no env.py; point it at an Alembic script folder."
        )
    if ini == ALEMBIC_INI and location is None:
        return DEFAULT_PROJECT
    return Project(ini=ini, script_location=location)
