"""Persistence: SQLAlchemy 2 async Core on SQLite (embedded default) or PostgreSQL (asyncpg)."""
