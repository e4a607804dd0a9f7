"""Persistence: SQLAlchemy tables, engine setup for SQLite and PostgreSQL, Alembic migrations."""
