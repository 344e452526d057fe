"""The backend's database behind one interface (:class:`Store`, :mod:`.base`), with a
PostgreSQL (:mod:`.postgres`) and an SQLite (:mod:`.sqlite`) implementation."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from flashgate.backend import db
from flashgate.backend.store.base import SecretWrite, Store
from flashgate.backend.store.postgres import PostgresStore
from flashgate.backend.store.sqlite import SqliteStore

__all__ = ["PostgresStore", "SecretWrite", "SqliteStore", "Store", "open_store"]


def open_store(url: str, *, one_step: bool = True) -> Store:
    """The store of database ``url`` (its engine created, nothing connected yet).
    ``one_step=False`` leaves every secret write to the general path (tests compare them)."""
    url = db.normalize_url(url)
    engine = db.create_engine(url)
    if not db.is_sqlite(url):
        return PostgresStore(engine, one_step=one_step)
    path = db.sqlite_path(url)
    if path is not None and make_url(url).query:
        # Opened with URL options (uri=true, ...) that a plain connection of the one-step
        # write would not honour: the general path only.
        return SqliteStore(engine, path, one_step=False)
    return SqliteStore(engine, path, one_step=one_step)
