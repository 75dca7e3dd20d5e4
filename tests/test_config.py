"""Environment files: validated on load, secrets filled from the process environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from safe_migrations.core.config import known_environments, load_environment
from safe_migrations.core.errors import ConfigError
from safe_migrations.core.masking import mask_url, redact

SECRETS = {
    "DB_HOST": "db.internal",
    "DB_PORT": "5432",
    "DB_NAME": "app",
    "DB_USER": "app",
    "DB_PASSWORD": "s3cr:t@/x",
}


def test_shipped_environments_load() -> None:
    assert {"local", "development", "staging", "production"} <= set(known_environments())
    for name in ("development", "staging", "production"):
        env = load_environment(name, environ=SECRETS)
        assert env.password == SECRETS["DB_PASSWORD"]
        assert "s3cr" not in env.masked_url
    assert load_environment(None, environ={}).is_sqlite


def test_production_policy_requires_backup_and_typed_confirmation() -> None:
    env = load_environment("production", environ=SECRETS)
    assert env.settings.backup.required
    assert env.settings.policy.confirm == "typed"
    assert not env.settings.policy.auto_rollback
    assert env.settings.reports.retention_days == 90


def test_unknown_environment_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="Unknown environment 'prod'.*development.*production"):
        load_environment("prod", environ={})


def test_missing_variable_is_named() -> None:
    environ = {k: v for k, v in SECRETS.items() if k != "DB_PASSWORD"}
    with pytest.raises(ConfigError, match="DB_PASSWORD, not set"):
        load_environment("staging", environ=environ)


def test_database_url_overrides_file() -> None:
    env = load_environment("staging", environ={"DATABASE_URL": "postgresql://u:pw@h:1/d"})
    assert env.url == "postgresql+psycopg2://u:pw@h:1/d"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("database: {url: 'sqlite://'}\nbackup: {formt: custom}\n", "unknown key 'backup.formt'"),
        (
            "database: {url: 'sqlite://'}\nbackup: {format: tar}\n",
            "key 'backup.format' must be one of 'custom', 'directory'",
        ),
        ("database: {url: 'sqlite://'}\nmigration: {retries: many}\n", "key 'migration.retries'"),
        ("backup: {}\n", "missing key 'database'"),
        (
            "database: {url: 'sqlite://', connect_timeout: 0}\n",
            "key 'database.connect_timeout' must be greater than 0 (got 0)",
        ),
        (
            "database: {url: 'sqlite://'}\npolicy: {allow_downgrade: maybe}\n",
            "key 'policy.allow_downgrade' must be true or false (got 'maybe')",
        ),
        (
            "database: {url: 'sqlite://'}\nbackup: {keep: 2.5}\n",
            "key 'backup.keep' must be a whole number (got 2.5)",
        ),
        ("database: {url: ''}\n", "key 'database.url' is required (or describe a fleet)"),
        ("- a\n- b\n", "must be a mapping of settings"),
        (
            "database: {url: 'oracle://x@y/z'}\n",
            "postgresql, sqlite, mysql and mariadb are supported",
        ),
        ("database: {url: 'mysql+mysqldb://x@y/z'}\n", "go through PyMySQL"),
        ("database: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_file_is_one_sentence_naming_file_and_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    (tmp_path / "broken.yml").write_text(content)
    with pytest.raises(ConfigError) as error:
        load_environment("broken", environ={}, directory=tmp_path)
    assert expected in error.value.message
    assert "broken.yml" in error.value.message
    assert "\n" not in error.value.message


def test_mask_url_hides_password_in_every_form() -> None:
    url = "postgresql+psycopg2://app:p%40ss%20w@db:5432/app"
    assert mask_url(url) == "postgresql+psycopg2://app:***@db:5432/app"
    assert redact("failed for p@ss w and p%40ss%20w", ["p@ss w"]) == "failed for *** and ***"


def write_file(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yml").write_bytes(content)
    return folder


@pytest.mark.parametrize(
    "password", ["kx7@qz9w", "kx7/qz9@vb4", "kx7?qz9#vb4@jm2", "kx7:qz9@vb4/jm2?pt5#ws8"]
)
def test_unencoded_password_in_database_url_is_refused_without_showing_it(
    tmp_path: Path, password: str
) -> None:
    from helpers import run_invoke, write_environment

    write_environment(tmp_path / "environments", "staging", tmp_path / "var")
    url = f"postgresql://app:{password}@db.internal:5432/app"
    result = run_invoke(
        "status",
        "--env",
        "staging",
        env={"MIGRATE_ENVIRONMENTS_DIR": str(tmp_path / "environments"), "DATABASE_URL": url},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "percent-encoded" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for token in ("kx7", "qz9", "vb4", "jm2", "pt5", "ws8"):
        assert token not in result.stdout + result.stderr


def test_alias_bomb_is_refused_quickly_in_one_sentence(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
    ]
    text = "\n".join(levels) + "\ndatabase: {url: *i}\n"
    assert len(text) < 1024
    folder = write_file(tmp_path, "bomb", text.encode())
    with pytest.raises(ConfigError, match="aliases") as refused:
        load_environment("bomb", environ={}, directory=folder)
    assert len(refused.value.message) < 300


@pytest.mark.parametrize(
    "text",
    [
        "database: " + "[" * 3000 + "]" * 3000 + "\n",
        "database:\n"
        + "".join("  " * i + f"a{i}:\n" for i in range(1, 1500))
        + "  " * 1500
        + "x: 1\n",
    ],
    ids=["flow", "block"],
)
def test_a_deeply_nested_file_is_refused_in_one_sentence_not_a_recursion_error(
    tmp_path: Path, text: str
) -> None:
    folder = write_file(tmp_path, "deep", text.encode())
    with pytest.raises(ConfigError, match="nests its settings more than 32 levels") as refused:
        load_environment("deep", environ={}, directory=folder)
    assert len(refused.value.message) < 300


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    text = b"database: &db {url: 'sqlite:///x.db', connect_timeout: 3}\nreports: {folder: var/r}\n"
    folder = write_file(tmp_path, "fine", text)
    assert (
        load_environment("fine", environ={}, directory=folder).settings.database.connect_timeout
        == 3
    )


def test_non_utf8_file_is_one_sentence(tmp_path: Path) -> None:
    folder = write_file(
        tmp_path, "latin", "database: {url: 'sqlite:///caf\xe9.db'}\n".encode("latin-1")
    )
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_environment("latin", environ={}, directory=folder)


@pytest.mark.parametrize("number", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_one_sentence(tmp_path: Path, number: str) -> None:
    text = f"database: {{url: 'sqlite:///x.db', connect_timeout: {number}}}\n".encode()
    folder = write_file(tmp_path, "odd", text)
    with pytest.raises(ConfigError, match="database.connect_timeout"):
        load_environment("odd", environ={}, directory=folder)


def test_a_huge_value_is_never_rendered_into_a_message(tmp_path: Path) -> None:
    text = ("database: {url: 'sqlite:///x.db', connect_timeout: '" + "9" * 5000 + "'}\n").encode()
    folder = write_file(tmp_path, "huge", text)
    with pytest.raises(ConfigError) as refused:
        load_environment("huge", environ={}, directory=folder)
    assert len(refused.value.message) < 300
