"""The embedded mode's cache: one SQLite file shared by every web process of the machine.

`./claas run` starts several web processes (claas_site/web.py). With Django's default in-memory
cache each would count sign-in attempts and write throttles on its own, and N processes would
allow N times each limit. The scaled mode shares Redis; without Redis this file is the one count.
`incr`/`decr` are one UPDATE and `add` one transaction, so they are atomic across processes, which
the sign-in limit relies on (claas_site/login_limit.py). Integers are kept as numbers (so that they
can be incremented in place), anything else pickled: the values are CLaaS's own, never a user's.
"""
from __future__ import annotations

import pickle
import random
import sqlite3
import threading
import time
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

FOREVER = float("inf")
SCHEMA = ("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, number INTEGER, value BLOB, "
          "expires REAL NOT NULL)")


class SQLiteCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.path = location
        self.local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(SCHEMA)
            self.local.db = db
        return db

    def _expires(self, timeout: Any) -> float:
        expires = self.get_backend_timeout(timeout)
        return FOREVER if expires is None else expires

    @staticmethod
    def _columns(value: Any) -> tuple[int | None, bytes | None]:
        if type(value) is int:
            return value, None
        return None, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        row = self._db().execute("SELECT number, value FROM cache WHERE key = ? AND expires > ?",
                                 (key, time.time())).fetchone()
        if row is None:
            return default
        return row[0] if row[1] is None else pickle.loads(row[1])

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        key = self.make_and_validate_key(key, version=version)
        db = self._db()
        db.execute("INSERT OR REPLACE INTO cache (key, number, value, expires) VALUES (?, ?, ?, ?)",
                   (key, *self._columns(value), self._expires(timeout)))
        if random.random() < 0.01:  # now and then, sweep what has expired
            db.execute("DELETE FROM cache WHERE expires <= ?", (time.time(),))

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM cache WHERE key = ? AND expires <= ?", (key, time.time()))
            added = db.execute("INSERT OR IGNORE INTO cache (key, number, value, expires) VALUES (?, ?, ?, ?)",
                               (key, *self._columns(value), self._expires(timeout))).rowcount == 1
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return added

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        row = self._db().execute("UPDATE cache SET number = number + ? WHERE key = ? AND expires > ? "
                                 "AND number IS NOT NULL RETURNING number", (delta, key, time.time())).fetchone()
        if row is None:
            raise ValueError(f"Key '{key}' not found")
        return row[0]

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self._db().execute("UPDATE cache SET expires = ? WHERE key = ? AND expires > ?",
                                  (self._expires(timeout), key, time.time())).rowcount == 1

    def delete(self, key: str, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self._db().execute("DELETE FROM cache WHERE key = ?", (key,)).rowcount == 1

    def has_key(self, key: str, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self._db().execute("SELECT 1 FROM cache WHERE key = ? AND expires > ?",
                                  (key, time.time())).fetchone() is not None

    def clear(self) -> None:
        self._db().execute("DELETE FROM cache")

    def close(self, **kwargs: Any) -> None:
        """Connections stay open for the thread's life (Django calls this after every request)."""
