"""How often the tool looks at ``pg_locks``: the lock-wait watcher and the rehearsal's
observer share one interval, and the configuration checks limits against it. Imports
nothing of the package, so every layer may use it."""

from __future__ import annotations

SAMPLE_INTERVAL = 0.02  # seconds between looks; a lock wait shorter than this may be missed
