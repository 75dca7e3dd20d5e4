"""The models' compare on PostgreSQL with one catalog query where Alembic makes one per table.

Alembic's PostgreSQL impl asks, for every integer column whose default is
``nextval('...'::regclass)``, whether the sequence is owned by that column (then it is a
SERIAL and the default is not compared): one query per table with a serial key, about
0.4 ms each, most of a compare's queries on a schema of many tables. Here the owners of
all sequences are read once per compare, under the names a reflected default gives
them, and each column is answered with Alembic's own rule; a name not among them goes
to Alembic's own query.
"""

from __future__ import annotations

import re
from typing import Any

NEXTVAL = re.compile(r"nextval\('(.+?)'::regclass\)")  # Alembic's own pattern

# Alembic's query for every sequence at once, owned or not: each named as pg_get_expr
# prints it in this session (the regclass text), with its owning column or NULL.
OWNERS = """
select c.oid::regclass::text, n.nspname, owner.attname
from pg_class as c
join pg_namespace n on n.oid = c.relnamespace
left join (
  select d.objid, a.attname
  from pg_depend d
  join pg_class t on t.oid = d.refobjid
  join pg_attribute a on a.attrelid = t.oid and a.attnum = d.refobjsubid
  where d.classid = 'pg_class'::regclass and d.refclassid = 'pg_class'::regclass
) owner on owner.objid = c.oid
where c.relkind = 'S'
"""


def owners(connection: Any) -> dict[str, str | None]:
    """Sequence name -> owning column (None: owned by none). A sequence visible
    unqualified is also listed as SQLAlchemy names it for a table in another schema
    (``"schema".name``)."""
    from sqlalchemy import text

    found: dict[str, str | None] = {}
    for name, schema, column in connection.execute(text(OWNERS)):
        found.setdefault(name, column)
        if "." not in name:
            found.setdefault(f'"{schema}".{name}', column)
    return found


def batch_serial_checks(context: Any) -> None:
    """Give a MigrationContext's impl a column-reflect hook answered from one query."""
    from sqlalchemy import BIGINT, INTEGER

    alembic_own = context.impl.autogen_column_reflect
    known: dict[str, str | None] | None = None

    def column_reflect(inspector: Any, table: Any, column_info: dict[str, Any]) -> None:
        nonlocal known
        default = column_info.get("default")
        found = (
            NEXTVAL.match(default)
            if isinstance(default, str) and isinstance(column_info["type"], (INTEGER, BIGINT))
            else None
        )
        if found is not None and known is None:
            known = owners(context.connection)
        if found is None or known is None or found.group(1) not in known:
            alembic_own(inspector, table, column_info)
        elif known[found.group(1)] == column_info["name"]:
            del column_info["default"]  # a SERIAL, as Alembic decides

    context.impl.autogen_column_reflect = column_reflect
