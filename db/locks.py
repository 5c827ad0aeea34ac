"""PostgreSQL advisory locks: one selection run, one sweep, one beat leader at a time."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def try_advisory_lock(conn: Connection, key: int) -> bool:
    """Take the session-level advisory lock ``key`` if free."""
    return bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())


def advisory_lock(conn: Connection, key: int) -> None:
    """Wait for, then take, the session-level advisory lock ``key``."""
    conn.execute(sa.select(sa.func.pg_advisory_lock(key)))


def advisory_xact_lock(conn: Connection, key: int) -> None:
    """Wait for, then take, the advisory lock ``key`` until the end of this transaction."""
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def advisory_unlock(conn: Connection, key: int) -> None:
    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
