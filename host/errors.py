"""The exceptions the storage engine raises, in one place.

`WriteError`, `QueryError` and `DatabaseNotFound` belong to the engine-facing interface
(`host.interface`) and are re-exported here so storage callers import every error from one
module. The others are for the admin calls (create/delete/list of databases and tables).
"""

from __future__ import annotations

from host.interface import DatabaseNotFound, QueryError, WriteError

__all__ = [
    "AlreadyExists",
    "DatabaseNotFound",
    "InvalidName",
    "InvalidSchema",
    "NotFound",
    "QueryError",
    "WriteError",
]


class NotFound(LookupError):
    """An admin call named a database or table that does not exist."""


class AlreadyExists(Exception):
    """An admin call tried to create a database or table that already exists."""


class InvalidName(ValueError):
    """A database, table or column name breaks the naming rules (or is reserved)."""


class InvalidSchema(ValueError):
    """A table definition is inconsistent: unknown field type, or a name used twice."""
