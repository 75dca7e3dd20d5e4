"""The pipeline and its steps: health, confirm, lock, backup, upgrade, validate,
report, composed by ``migrate.py`` over one run context (``context.py``)."""
