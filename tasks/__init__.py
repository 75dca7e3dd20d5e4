"""Safe Alembic migrations: the step modules behind the Invoke tasks.

``tasks.py`` at the repository root is what Invoke loads; it points its
``__path__`` here so both routes import the same modules.
"""
