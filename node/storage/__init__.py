"""Storage: SQLite (WAL) from trio with one group-committing writer and a reader pool."""

from .database import Database, StorageError
from .migrations import MIGRATIONS, Migration, Schema

__all__ = ["MIGRATIONS", "Database", "Migration", "Schema", "StorageError"]
