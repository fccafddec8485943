"""The only package that knows SQL: SQLAlchemy 2 Core on SQLite (default) or PostgreSQL; Alembic."""
