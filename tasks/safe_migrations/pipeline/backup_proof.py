"""A backup proven by restoring it: ``backup.prove: restore``, ``invoke backup --prove``,
``invoke backups --prove PATH|latest``.

The archive is restored into a scratch database and each table's row count and
checksum compared with what the source held at the dump's snapshot (recorded in the
manifest when the backup was taken). A difference stops the run before any migration
statement (exit 3) and the backup is removed: a backup that does not bring back what
was dumped must never be restored. The restore's duration is the recovery time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safe_migrations.core.config import Environment
from safe_migrations.core.errors import EXIT_BLOCKED, BackupError
from safe_migrations.engines.base import Engine


class ProofError(BackupError):
    """The restored backup differs from what its source held."""

    exit_code = EXIT_BLOCKED


def prove(
    env: Environment,
    engine: Engine,
    backup: dict[str, Any],
    expected: dict[str, Any] | None,
    after: str = "It was not kept as a backup; nothing was migrated.",
    checksum: str | None = None,
) -> dict[str, Any]:
    """Restore ``backup`` (a manifest with its local ``path``) into a scratch database and
    compare; the proof for the manifest. Without ``expected`` (a backup taken before its
    source was fingerprinted) it proves the archive restores, and says nothing compared.
    ``checksum``: how ``expected`` was made (None: the engine's way for new ones)."""
    from safe_migrations.operations.restore import readable_archive

    checksum = checksum or engine.checksum

    with (
        readable_archive(env, backup) as clear,
        engine.scratch_database(env, env.backup_dir) as scratch,
    ):
        found, seconds = engine.restored_fingerprints(env, scratch, clear, checksum)
    name = Path(backup["path"]).name
    if expected is not None:
        differ = sorted(
            k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k)
        )
        if differ:
            raise ProofError(
                f"The backup {name} does not restore what its source held at the dump's "
                f"snapshot: {_differences(differ, expected, found)}. {after} Take a new "
                "backup, and find out how this one was changed."
            )
    return {
        "method": "restore",
        "compared": expected is not None,
        "recovery_seconds": round(seconds, 3),
        "tables": len(found),
        "rows": sum(int(rows) for rows, _checksum in found.values()),
        "proven_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprints": expected if expected is not None else found,
        "checksum": checksum,
    }


def _differences(names: list[str], expected: dict[str, Any], found: dict[str, Any]) -> str:
    said = []
    for name in names[:5]:
        want, got = expected.get(name), found.get(name)
        if want is None:
            said.append(f"{name} is in the backup but was not in the source")
        elif got is None:
            said.append(f"{name} is missing from the backup")
        elif want[0] != got[0]:
            said.append(f"{name} has {got[0]:,} rows, the source had {want[0]:,}")
        else:
            said.append(f"{name} has {got[0]:,} rows as the source had, but other contents")
    return "; ".join(said) + ("; ..." if len(names) > 5 else "")


def summary(proof: dict[str, Any]) -> str:
    """The sentence a report or a listing gives a proof."""
    what = (
        "every table's rows and checksum match the source at the dump's snapshot"
        if proof.get("compared")
        else "it restores (no fingerprints of its source on record to compare with)"
    )
    return (
        f"restored into a scratch database in {proof['recovery_seconds']:.2f} s "
        f"({proof['tables']} tables, {proof['rows']:,} rows): {what}"
    )


def prove_existing(env: Environment, spec: str) -> dict[str, Any]:
    """``invoke backups --prove PATH|latest``: one of the environment's own backups,
    checksum first, restored and compared with the fingerprints its manifest recorded;
    the proof is written into its manifest. Returns the manifest."""
    from safe_migrations.engines import engine_for
    from safe_migrations.operations.restore import find_backup, local_copy, verify_checksum
    from safe_migrations.stores import store_for

    engine = engine_for(env.dialect)
    backup = find_backup(env, spec)
    with local_copy(env, backup) as local:
        verify_checksum(local)
        recorded = backup.get("proof") or {}
        expected = recorded.get("fingerprints")
        checksum = recorded.get("checksum", "md5") if expected is not None else None
        proof = prove(
            env, engine, local, expected, after="It stays where it is, unproven.", checksum=checksum
        )
    store_for(env).record_proof(backup, proof)
    return backup | {"proof": proof}
