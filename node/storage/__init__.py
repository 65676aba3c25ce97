"""Storage: SQLite (WAL) from trio with one group-committing writer and a reader pool."""

from .database import Database, StorageError
from .migrations import MIGRATIONS, Migration

__all__ = ["MIGRATIONS", "Database", "Migration", "StorageError"]
