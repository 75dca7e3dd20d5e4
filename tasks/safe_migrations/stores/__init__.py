"""Where backups are kept: the local folder and the S3 store behind one interface
(``base.py``), what every backup shares (``backupfiles.py``: names, manifests, the
private folder, the file sink), and encryption.

``store_for`` picks the environment's store by ``backup.storage.type`` and imports its
module on first use, so boto3 is imported only by an environment that keeps its backups
in S3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from safe_migrations.core.config import Environment
    from safe_migrations.stores.base import BackupStore

STORES = {
    "local": "safe_migrations.stores.local:LocalStore",
    "s3": "safe_migrations.stores.s3:S3Store",
}


def store_for(env: Environment) -> BackupStore:
    """The environment's backup store (the configuration parser knows only these types)."""
    module, _, name = STORES[env.settings.backup.storage.type].partition(":")
    return cast("BackupStore", getattr(importlib.import_module(module), name)(env))
