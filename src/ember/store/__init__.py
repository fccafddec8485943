"""The only package that knows SQL: SQLAlchemy 2 Core over SQLite (default) or PostgreSQL, Alembic migrations."""
