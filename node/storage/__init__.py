"""Storage: SQLite (WAL) from trio with one group-committing writer and a reader pool."""

from .database import Database, StorageError, at_batch_end
from .migrations import MIGRATIONS, Migration, Schema

__all__ = ["MIGRATIONS", "Database", "Migration", "Schema", "StorageError", "at_batch_end"]
