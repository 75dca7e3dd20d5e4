"""The Alembic project: its scripts through Alembic's API, lint and the baseline,
`generate`, and `safe-migrations init` with the scaffold it writes."""
