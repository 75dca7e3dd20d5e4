"""Environments: ``environments/<name>.yml`` loaded, validated and resolved.

A file is checked when loaded, so a typo stops the run with one sentence that
names the file, the key and what is allowed, before anything touches a database.

Kept long: the file's schema is one piece (every setting's type, default and its
one-sentence error side by side, and the cross-key checks that need all of them);
split, a new key would need edits in two modules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from safe_migrations.core.errors import ConfigError
from safe_migrations.core.masking import mask_url, url_password
from safe_migrations.core.schema import SchemaError, build, setting

PROJECT_MARKERS = ("tasks.py", "alembic.ini", "environments")


def find_project_root(start: Path | None = None) -> Path:
    """The user's project: ``SAFE_MIGRATIONS_ROOT``, else the nearest folder at or above
    the working directory holding ``tasks.py``, ``alembic.ini`` or ``environments/``.
    Never the folder this package is installed in."""
    if os.environ.get("SAFE_MIGRATIONS_ROOT"):
        return Path(os.environ["SAFE_MIGRATIONS_ROOT"]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any(
            (folder / marker).exists() for marker in ("tasks.py", "alembic.ini", "environments")
        ):
            return folder
    return here


def _no_project_here(directory: Path) -> str:
    """Where to run from, when the tasks started above the project (a repository whose
    Alembic project is in a subfolder such as backend/)."""
    here = directory.parent
    below = sorted(
        {
            marker.parent
            for pattern in ("*/environments", "*/*/environments")
            for marker in here.glob(pattern)
            if marker.is_dir() and not any(p.startswith(".") for p in marker.parts[-3:-1])
        }
    )
    if below:
        folders = " or ".join(f"{p.relative_to(here)}/" for p in below)
        return (
            f"{here} holds no environments/: the project is in {folders}; run from there "
            f"(cd {below[0].relative_to(here)}) or set SAFE_MIGRATIONS_ROOT to it."
        )
    return (
        f"{here} holds no environments/ and none is in a folder below it: run from your "
        "Alembic project's folder, after `safe-migrations init` there."
    )


PROJECT_ROOT = find_project_root()
ENVIRONMENTS_DIR = PROJECT_ROOT / "environments"
DEFAULT_ENVIRONMENT = "local"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  # required unless the file describes a fleet
    connect_timeout: float = setting(10.0, gt=0, le=600)
    # A peer that stops answering mid-statement (lost network) is given up on after about
    # this long (TCP keepalives and tcp_user_timeout), then handled like a server restart.
    network_timeout: float = setting(30.0, ge=2, le=3600)


@dataclass(frozen=True)
class AlembicSettings:
    """Which Alembic project the tasks drive: this repository's, or one a team already has."""

    ini: str = "alembic.ini"
    script_location: str | None = None


@dataclass(frozen=True)
class HealthSettings:
    min_free_disk_mb: int = setting(100, ge=0)
    max_transaction_age: float = setting(300.0, gt=0)
    check_blocking_sessions: bool = True
    lint: bool = False


@dataclass(frozen=True)
class StorageSettings:
    """Where backups are kept: the backup folder, or an S3-compatible store (credentials
    from the AWS SDK's standard chain, never from this file)."""

    type: Literal["local", "s3"] = "local"
    bucket: str | None = None
    prefix: str = ""  # objects go under it, e.g. "staging/"
    endpoint_url: str | None = None  # any S3-compatible service (MinIO, R2, Ceph, ...)
    region: str | None = None


@dataclass(frozen=True)
class BackupSettings:
    required: bool = False
    folder: str = "var/backups"
    format: Literal["custom", "directory"] = "custom"
    jobs: int = setting(1, ge=1, le=64)
    compression: int = setting(6, ge=0, le=9)
    timeout: float = setting(3600.0, gt=0)
    keep: int | None = setting(10, ge=1)
    keep_days: int | None = setting(None, ge=1)
    # age recipient (age1...) or SSH public key; ${VAR} allowed. Backups are encrypted
    # to it on the way to disk (custom format, or SQLite); empty means not encrypted.
    encrypt_to: str | None = None
    storage: StorageSettings = field(default_factory=StorageSettings)
    # restore: each backup restored into a scratch database and compared table by table
    # with its source at the dump's snapshot before anything migrates (PostgreSQL).
    prove: Literal["none", "restore"] = "none"


@dataclass(frozen=True)
class MigrationSettings:
    lock_timeout: float = setting(2.0, ge=0)
    # Seconds per revision to wait for its locks: attempts of one lock_timeout each,
    # with the holders watched from the side in between (lockwait.py).
    lock_budget: float = setting(60.0, gt=0, le=86400)
    statement_timeout: float = setting(0.0, ge=0)
    # Terminate holders that block the migration and have sat idle in a transaction
    # longer than this (seconds); off when unset. Refused in production unless
    # policy.allow_cancel_blockers.
    cancel_blockers_after: float | None = setting(None, gt=0)
    lock_wait: float = setting(60.0, ge=0)
    transaction_per_migration: bool = True
    # PostgreSQL: Alembic's index, constraint and NOT NULL operations in their
    # non-blocking form (engines/pgsafe.py); check: listed and refused; off: as written.
    safe_operations: Literal["rewrite", "check", "off"] = "off"
    # PostgreSQL, with safe_operations on: an UPDATE, DELETE or INSERT ... SELECT the
    # planner expects to touch more rows than this is refused with the backfill recipe
    # (pgrefusals.py; checked before the run and as a revision issues it). Unset: none.
    max_rows_in_one_statement: int | None = setting(None, ge=1)
    # MySQL/MariaDB: each ALTER TABLE / CREATE INDEX / DROP INDEX with ALGORITHM=INSTANT,
    # else INPLACE with LOCK=NONE; enforce refuses what the server cannot run online.
    online_ddl: Literal["enforce", "warn", "off"] = "off"
    # Under enforce, a statement the server can only run by copying still runs as
    # written on a table smaller than this (MB of data and indexes, information_schema):
    # copying it takes moments, not an outage. 0: none.
    online_ddl_small_table_mb: float = setting(0.0, ge=0)
    # What runs an ALTER TABLE the server can only copy: pt-online-schema-change, with
    # its --max-load and --critical-load (SHOW GLOBAL STATUS thresholds).
    online_tool: Literal["pt-osc", "none"] = "none"
    online_tool_max_load: str = "Threads_running=25"
    online_tool_critical_load: str = "Threads_running=50"
    # No longer used (lock_budget bounds the wait); accepted with a warning.
    retries: int | None = setting(None, ge=0, le=100)
    retry_backoff: float | None = setting(None, ge=0)


@dataclass(frozen=True)
class PolicySettings:
    confirm: Literal["never", "prompt", "typed"] = "prompt"
    allow_downgrade: bool = True
    allow_rollback: bool = True
    auto_rollback: bool = False
    allow_cancel_blockers: bool = False
    # `migrate` refuses (exit 3) unless a rehearsal of the same range and scripts passed
    # within this many hours (rehearsal.py); off when unset.
    require_rehearsal_hours: float | None = setting(None, gt=0, le=24 * 365)
    # A rehearsal fails when a revision holds ACCESS EXCLUSIVE on a table longer than this.
    max_exclusive_lock_ms: int | None = setting(None, ge=0)
    # The longest an application's read or write may wait in a rehearsal with traffic.
    max_app_wait_ms: int | None = setting(None, ge=1)


@dataclass(frozen=True)
class ReportSettings:
    folder: str = "var/reports"
    retention_days: int = setting(30, ge=1)


@dataclass(frozen=True)
class TelemetrySettings:
    """Where a run's traces and metrics go (pipeline/telemetry.py); none unless set."""

    otlp_endpoint: str | None = None  # an OTLP/HTTP collector, e.g. http://collector:4318
    file: str | None = None  # OTLP JSON lines, for teams without a collector
    prometheus_textfile: str | None = None  # node_exporter's textfile collector format


@dataclass(frozen=True)
class CheckSettings:
    # `check --stairway` makes its scratch database on the environment's server as
    # <scratch_prefix><12 hex digits>; a shared server's naming rules may want a prefix.
    scratch_prefix: str = setting("stairway_", min_length=1)


@dataclass(frozen=True)
class RehearsalSettings:
    """Where `invoke rehearse` makes its copy: the environment's own server unless
    ``server`` names another (a URL; ${VAR}s allowed, filled when the rehearsal runs)."""

    server: str | None = None
    prefix: str = setting("rehearsal_", min_length=1)
    # Synthetic clients beside the rehearsed upgrade (`rehearse --traffic N` overrides).
    traffic: int = setting(0, ge=0, le=32)
    long_reader_seconds: float | None = setting(None, gt=0, le=3600)


@dataclass(frozen=True)
class DiscoverSettings:
    """Every database on a server whose name matches ``like`` (SQL LIKE), templates excluded."""

    server: str = setting(min_length=1)
    # Required: a default of '%' would take in every database on the server.
    like: str = setting(min_length=1)


@dataclass(frozen=True)
class FleetSettings:
    """Many databases, one history: the rest of the file applies to each member."""

    jobs: int = setting(4, ge=1, le=64)
    databases: dict[str, str] = field(default_factory=dict)  # name -> URL, ${VAR}s allowed
    discover: DiscoverSettings | None = None


_SCRATCH_PREFIX = re.compile(r"^[a-z_][a-z0-9_$]{0,49}$")


@dataclass(frozen=True)
class EnvironmentFile:
    database: DatabaseSettings
    description: str = ""
    alembic: AlembicSettings = field(default_factory=AlembicSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    migration: MigrationSettings = field(default_factory=MigrationSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    check: CheckSettings = field(default_factory=CheckSettings)
    rehearsal: RehearsalSettings = field(default_factory=RehearsalSettings)
    fleet: FleetSettings | None = None


@dataclass(frozen=True)
class Environment:
    """A loaded environment: settings plus the resolved (secret) URL."""

    name: str
    path: Path
    url: str
    settings: EnvironmentFile
    root: Path = PROJECT_ROOT
    warnings: tuple[str, ...] = ()  # shown once by the task that loaded it
    # A fleet member's name: this environment is then one database of the file's fleet,
    # and ``name`` is "<file>.<member>", which its backups and reports carry.
    member: str | None = None

    @property
    def is_fleet(self) -> bool:
        """The file describes a fleet and this is the fleet, not one of its members."""
        return self.settings.fleet is not None and self.member is None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def password(self) -> str | None:
        return url_password(self.url)

    @property
    def dialect(self) -> str:
        return self.url.split(":", 1)[0].split("+", 1)[0]

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_mysql(self) -> bool:
        """MySQL or MariaDB (``mysql+pymysql://`` or ``mariadb+pymysql://``)."""
        return self.dialect in MYSQL_DIALECTS

    def resolve(self, folder: str) -> Path:
        """A folder from the file, relative to the project root unless absolute."""
        path = Path(folder)
        return path if path.is_absolute() else self.root / path

    @property
    def backup_dir(self) -> Path:
        return self.resolve(self.settings.backup.folder)

    @property
    def report_dir(self) -> Path:
        return self.resolve(self.settings.reports.folder)


MYSQL_DIALECTS = ("mysql", "mariadb")


def known_environments(directory: Path = ENVIRONMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yml"))


def substitute(template: str, environ: dict[str, str], where: str, url: bool = True) -> str:
    """Fill ``${VAR}`` placeholders (``${VAR:-default}`` when unset is fine); in a URL the
    values are URL-quoted so any password is safe."""
    missing = [
        name
        for name, default in dict.fromkeys(_PLACEHOLDER.findall(template))
        if name not in environ and not default
    ]
    if missing:
        names = ", ".join(missing)
        noun = "variable" if len(missing) == 1 else "variables"
        raise ConfigError(
            f"{where} needs the environment {noun} {names}, not set; "
            f"export {names} (or set DATABASE_URL to the whole URL)."
        )

    def value(match: re.Match[str]) -> str:
        default = (match.group(2) or ":-")[2:]
        text = environ.get(match.group(1), default)
        return quote(text, safe="") if url else text

    return _PLACEHOLDER.sub(value, template)


def parse_environment(name: str, path: Path, data: object) -> EnvironmentFile:
    """Validate the YAML data of one file; raise ConfigError naming the key."""
    where = _relative(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings, not {type(data).__name__}.")
    backup = data.get("backup")
    if isinstance(backup, dict) and backup.get("storage") in ("local", "s3"):
        data = {**data, "backup": {**backup, "storage": {"type": backup["storage"]}}}
    try:
        settings = build(EnvironmentFile, data)
    except SchemaError as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    migration, policy = settings.migration, settings.policy
    if (
        name == "production"
        and migration.cancel_blockers_after
        and not policy.allow_cancel_blockers
    ):
        raise ConfigError(
            f"{where}: key 'migration.cancel_blockers_after' terminates other sessions, which "
            "production refuses unless policy.allow_cancel_blockers is true; remove it or "
            "allow it there."
        )
    storage = settings.backup.storage
    if storage.type == "s3" and not storage.bucket:
        raise ConfigError(f"{where}: key 'backup.storage.bucket' is required with type s3.")
    if storage.type == "s3" and settings.backup.format == "directory":
        raise ConfigError(
            f"{where}: backup.format 'directory' stays on local disk; with backup.storage "
            "type s3 use format 'custom', which streams to the store."
        )
    for key, prefix in (
        ("check.scratch_prefix", settings.check.scratch_prefix),
        ("rehearsal.prefix", settings.rehearsal.prefix),
    ):
        if not _SCRATCH_PREFIX.match(prefix):
            raise ConfigError(
                f"{where}: key '{key}' must be lower-case letters, digits and "
                "underscores starting with a letter or underscore, at most 50 characters "
                "(a database name is made of it and 12 hex digits)."
            )
    _check_lock_limit(settings.policy.max_exclusive_lock_ms, where)
    fleet = settings.fleet
    if not settings.database.url and fleet is None:
        raise ConfigError(f"{where}: key 'database.url' is required (or describe a fleet).")
    if fleet is not None:
        if not fleet.databases and fleet.discover is None:
            raise ConfigError(
                f"{where}: key 'fleet' needs 'databases' (name: URL) or 'discover' "
                "(server and like), or both."
            )
        bad = [n for n in fleet.databases if not MEMBER_NAME.match(n)]
        if bad:
            raise ConfigError(
                f"{where}: fleet member name {bad[0][:40]!r} must be letters, digits, '_' and "
                "'-', starting with a letter or digit."
            )
    return settings


def _check_lock_limit(limit: int | None, where: str) -> None:
    """A limit below two sampling intervals cannot be told from no hold at all."""
    from safe_migrations.core.sampling import SAMPLE_INTERVAL

    floor = round(2 * SAMPLE_INTERVAL * 1000)
    if limit is not None and limit < floor:
        raise ConfigError(
            f"{where}: key 'policy.max_exclusive_lock_ms' is {limit}, below {floor} ms (two "
            f"of the rehearsal's {SAMPLE_INTERVAL * 1000:g} ms sampling intervals), where a "
            f"hold cannot be measured; set it to {floor} or more."
        )


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def load_environment(
    name: str | None = None,
    environ: dict[str, str] | None = None,
    directory: Path | None = None,
    need_database: bool = True,
) -> Environment:
    """Load ``environments/<name>.yml``; ``DATABASE_URL`` overrides the file's URL.

    ``need_database=False`` is for tasks that only read files (rendering a report):
    the URL's unset ``${VAR}``s then stay as they are, so no secret is needed.
    """
    import yaml

    name = name or DEFAULT_ENVIRONMENT
    environ = dict(os.environ if environ is None else environ)
    directory = directory or Path(environ.get("MIGRATE_ENVIRONMENTS_DIR") or ENVIRONMENTS_DIR)
    known = known_environments(directory)
    if not known and not directory.is_dir():
        raise ConfigError(_no_project_here(directory))
    if not _NAME.match(name) or name not in known:
        raise ConfigError(
            f"Unknown environment '{name}'; choose one of: {', '.join(known)} "
            f"(files in {_relative(directory)}/)."
        )
    path = directory / f"{name}.yml"
    try:
        data = read_yaml(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{_relative(path)} is not UTF-8 text (byte {exc.start}); save it as UTF-8."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{_relative(path)} is not valid YAML{line}; fix its syntax.") from None
    settings = parse_environment(name, path, data)
    if settings.fleet is not None and not settings.database.url:  # its members have URLs
        if need_database:
            settings = _encryption(settings, environ, path)
        return Environment(name, path, "", settings, warnings=deprecations(settings, path))
    if environ.get("DATABASE_URL"):
        url = environ["DATABASE_URL"]
    elif not need_database:
        try:  # with the secrets when they are there, so redaction still knows the password
            url = substitute(settings.database.url, environ, "")
        except ConfigError:
            url = settings.database.url
        return Environment(name, path, url, settings, warnings=deprecations(settings, path))
    else:
        url = substitute(settings.database.url, environ, f"{_relative(path)} (database.url)")
    url = _normalise(url)
    _check_url(url, path)
    settings = _encryption(settings, environ, path)
    _check_proof(settings, url, path)
    return Environment(name, path, url, settings, warnings=deprecations(settings, path))


def with_traffic(env: Environment, clients: int) -> Environment:
    """The environment with ``rehearsal.traffic`` set (``rehearse --traffic N``)."""
    from dataclasses import replace

    if not 0 <= clients <= 32:
        raise ConfigError(f"--traffic {clients} is out of range; give 0 to 32 clients.")
    if clients and env.dialect != "postgresql":
        raise ConfigError(
            "--traffic runs its clients on PostgreSQL copies only; leave it out here."
        )
    rehearsal = replace(env.settings.rehearsal, traffic=clients)
    return replace(env, settings=replace(env.settings, rehearsal=rehearsal))


def with_proof(env: Environment) -> Environment:
    """The environment with ``backup.prove: restore`` (``--prove``), checked as if loaded."""
    from dataclasses import replace

    settings = replace(env.settings, backup=replace(env.settings.backup, prove="restore"))
    _check_proof(settings, env.url, env.path)
    return replace(env, settings=settings)


def _check_proof(settings: EnvironmentFile, url: str, path: Path) -> None:
    """backup.prove and rehearsal.traffic where they are not built, refused when the file
    is loaded, not mid-run."""
    if settings.rehearsal.traffic and url.split(":", 1)[0].split("+", 1)[0] != "postgresql":
        raise ConfigError(
            f"{_relative(path)}: rehearsal.traffic runs its clients on PostgreSQL copies "
            "only; remove it."
        )
    if settings.backup.prove != "restore":
        return
    if url.split(":", 1)[0].split("+", 1)[0] != "postgresql":
        raise ConfigError(
            f"{_relative(path)}: backup.prove: restore is available for PostgreSQL backups "
            "only; remove it (MySQL restores are proven on a scratch database anyway)."
        )
    if settings.backup.format != "custom":
        raise ConfigError(
            f"{_relative(path)}: backup.prove: restore takes custom-format backups; remove "
            "backup.format: directory, or the proof."
        )


def deprecations(settings: EnvironmentFile, path: Path) -> tuple[str, ...]:
    """Sentences for keys a file still carries that no longer do what they did."""
    migration = settings.migration
    if migration.retries is None and migration.retry_backoff is None:
        return ()
    return (
        f"{_relative(path)}: migration.retries and migration.retry_backoff are no longer "
        "used; each revision now waits for its locks for up to migration.lock_budget "
        f"({migration.lock_budget:g}s), retrying the moment the holders let go. "
        "Remove them (and set lock_budget if the default does not fit).",
    )


def _encryption(settings: EnvironmentFile, environ: dict[str, str], path: Path) -> EnvironmentFile:
    """``backup.encrypt_to`` with its ``${VAR}``s filled and its key checked."""
    import dataclasses

    template = settings.backup.encrypt_to
    where = _relative(path)
    recipient = (
        substitute(template, environ, f"{where} (backup.encrypt_to)", url=False).strip()
        if template
        else ""
    )
    if recipient:
        from safe_migrations.stores.encryption import parse_recipient

        parse_recipient(recipient, where)
        if settings.backup.format == "directory":
            raise ConfigError(
                f"{where}: backup.encrypt_to needs backup.format: custom (a directory-format "
                "backup is many files and is not encrypted)."
            )
    backup = dataclasses.replace(settings.backup, encrypt_to=recipient or None)
    return dataclasses.replace(settings, backup=backup)


MAX_YAML_NODES = 10_000  # an environment file has about a hundred
MAX_YAML_DEPTH = 32  # an environment file nests three or four levels


def read_yaml(path: Path) -> Any:
    """Safe-load a YAML file whose aliases expand to at most MAX_YAML_NODES nodes.

    A few nested aliases (the "billion laughs") in under 1 KB would otherwise make
    any code that walks or prints the value run for minutes and gigabytes.
    """
    import yaml

    text = path.read_text(encoding="utf-8")
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # iterative: no recursion yet
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{_relative(path)} nests its settings more than {MAX_YAML_DEPTH} levels "
                    f"deep{_line(event.start_mark)}; an environment file needs a few."
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
        raise ConfigError(
            f"{_relative(path)} expands its YAML aliases to more than {MAX_YAML_NODES:,} "
            "values; write the settings out instead of nesting aliases."
        )
    return yaml.safe_load(text)


def _line(mark: Any) -> str:
    return f" (line {mark.line + 1})" if mark is not None else ""


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded; shared nodes counted once each
    time they are used, each computed once. A node that contains itself is unbounded."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            return MAX_YAML_NODES + 1
        return sizes[key]
    sizes[key] = -1
    children: list[Any] = []
    if isinstance(node.value, list):
        for item in node.value:
            children += list(item) if isinstance(item, tuple) else [item]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_YAML_NODES:
            break
    sizes[key] = total
    return total


def resolve_url(template: str, environ: dict[str, str], path: Path, key: str) -> str:
    """A URL from a file's key, with its ${VAR}s filled and checked like database.url."""
    url = _normalise(substitute(template, environ, f"{_relative(path)} ({key})"))
    _check_url(url, path)
    return url


def _normalise(url: str) -> str:
    """Relative SQLite paths start at the project root; PostgreSQL uses psycopg2, MySQL
    and MariaDB PyMySQL (pure Python, installs everywhere)."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg2://" + url[len(plain) :]
    for dialect in MYSQL_DIALECTS:
        if url.startswith(f"{dialect}://"):
            return f"{dialect}+pymysql://" + url[len(dialect) + 3 :]
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix:
        rest = url[len(prefix) :]
        if rest != ":memory:":
            return prefix + str(PROJECT_ROOT / rest)
    return url


def unencoded_userinfo(url: str) -> bool:
    """True when the user name or password holds an ``@``, ``/``, ``?`` or ``#`` that was
    not percent-encoded: such a URL parses into the wrong host and would print part of
    the password as if it were one."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.startswith("sqlite"):
        return False
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, remainder = rest[:cut], rest[cut:]
    # One '@', before the host; a '#' (a fragment) never belongs in a database URL.
    return authority.count("@") > 1 or "@" in remainder or "#" in rest


def _check_url(url: str, path: Path) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if unencoded_userinfo(url):
        raise ConfigError(
            f"The database URL for {_relative(path)} has an '@', '/', '?' or '#' in its user "
            "name or password that is not percent-encoded; write them as %40, %2F, %3F and "
            "%23 (Python: urllib.parse.quote(password, safe='')), or pass the password "
            "through a ${VAR} placeholder, which is encoded for you."
        )
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a port that is not a number raises here, not later
    except (ArgumentError, ValueError):
        raise ConfigError(
            f"The database URL for {_relative(path)} is not a valid URL ({mask_url(url)}); "
            "write it as dialect://user:password@host:port/name."
        ) from None
    from safe_migrations.engines.registry import supported, supported_sentence

    if parsed.get_backend_name() not in supported():
        raise ConfigError(
            f"The database URL for {_relative(path)} uses '{parsed.get_backend_name()}'; "
            f"{supported_sentence()} are supported."
        )
    if parsed.get_backend_name() in MYSQL_DIALECTS and parsed.get_driver_name() != "pymysql":
        raise ConfigError(
            f"The database URL for {_relative(path)} uses the driver "
            f"'{parsed.get_driver_name()}'; MySQL and MariaDB go through PyMySQL: write "
            f"{parsed.get_backend_name()}+pymysql:// (or {parsed.get_backend_name()}://)."
        )
