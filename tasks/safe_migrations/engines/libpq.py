"""libpq settings shared by our PostgreSQL sessions and by the clients we start
(pg_dump, pg_restore): keepalives that notice a silent peer, and the variables that
carry the connection (and its password) in a child's environment, never its argv."""

from __future__ import annotations

from safe_migrations.stores.backupfiles import child_environment


def keepalive_options(network_timeout: float) -> dict[str, int]:
    """libpq options that notice a peer gone silent within about ``network_timeout``:
    keepalive probes start after a third of it, and unacknowledged data or probes
    abort the connection once it has passed (TCP_USER_TIMEOUT)."""
    step = max(1, int(network_timeout // 3))
    return {
        "keepalives": 1,
        "keepalives_idle": step,
        "keepalives_interval": step,
        "keepalives_count": 3,
        "tcp_user_timeout": int(network_timeout * 1000),
    }


def pg_environment(url: str) -> dict[str, str]:
    """libpq variables for a child that connects: the password travels here, not in argv."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    child = child_environment()
    values = {
        "PGHOST": parsed.host,
        "PGPORT": parsed.port,
        "PGUSER": parsed.username,
        "PGPASSWORD": parsed.password,
        "PGDATABASE": parsed.database,
    }
    child.update({k: str(v) for k, v in values.items() if v is not None})
    child["PGCONNECT_TIMEOUT"] = "10"
    for key, value in parsed.query.items():
        if key == "sslmode":
            child["PGSSLMODE"] = str(value)
    return child
