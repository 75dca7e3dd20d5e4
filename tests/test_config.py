"""Environment files: validated on load, secrets filled from the process environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import known_environments, load_environment
from tasks.errors import ConfigError
from tasks.masking import mask_url, redact

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
        ("database: {url: ''}\n", "key 'database.url' must not be empty"),
        ("- a\n- b\n", "must be a mapping of settings"),
        ("database: {url: 'mysql://x@y/z'}\n", "only postgresql and sqlite"),
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
