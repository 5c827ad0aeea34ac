"""Connections, and the one place where driver errors become :mod:`tagger.errors`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from tagger.errors import ConfigError, DatabaseUnavailable, InputError

# SQLSTATEs that mean "this database is not (yet) ours": `tagger db upgrade` is the fix.
UNDEFINED_TABLE = "42P01"
INVALID_CATALOG = "3D000"  # the database does not exist
DUPLICATE_DATABASE = "42P04"
UNIQUE_VIOLATION = "23505"  # CREATE DATABASE racing another one can fail on pg_database's unique index

_MISSING_DATABASE = re.compile(r'database "[^"]*" does not exist')
NOT_MIGRATED = "the database has no repo-tagger schema (never migrated?): run `tagger db upgrade`"


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine (and pool) per URL and process: no per-batch connection setup on the hot path."""
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        connect_args={"connect_timeout": 5, "application_name": "repo-tagger"},
    )


# A statement over a whole run's rows (rollback, promote): the sorts, hashes and CTEs of a million rows
# kept in memory rather than spilled in many batches (still bounded, per node), and no JIT: compiling the
# wide UPDATEs and INSERTs took longer than it saved on rows that are mostly index and WAL work. And no
# nested loops: the planner's statistics rarely know a run's rows (a run under a tenth of a table never
# triggers auto-analyze), so it estimates them at one and loops over the other side once per row, which
# is quadratic in the run's size (a rollback of 10,066 repos: 36 s; with hash joins, 0.34 s).
BULK_WORK_MEM = "64MB"


def bulk_write_settings(conn: Connection) -> None:
    """For the rest of the caller's transaction: the settings of a statement over a whole run's rows."""
    conn.execute(sa.text("SELECT set_config('work_mem', :mem, true), set_config('jit', 'off', true), "
                         "set_config('enable_nestloop', 'off', true)"), {"mem": BULK_WORK_MEM})


def _first_line(error: BaseException | None) -> str:
    """The driver's message without its SQL, parameters and hints: one line for a user."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextmanager
def translate_errors() -> Iterator[None]:
    """Driver errors → DatabaseUnavailable (retry), InputError (bad data, no retry), or ConfigError (a
    database that is not migrated: the user's to fix)."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate == UNDEFINED_TABLE:
            raise ConfigError(f"{NOT_MIGRATED} ({_first_line(exc.orig)})") from exc
        # At connect time psycopg gives no SQLSTATE, only the server's message.
        missing = _MISSING_DATABASE.search(str(exc.orig))
        if sqlstate == INVALID_CATALOG or missing:
            what = missing.group(0) if missing else _first_line(exc.orig)
            raise ConfigError(f"{what}: run `tagger db upgrade` to create it") from exc
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            reason = _first_line(exc.orig)
            if reason.startswith("connection failed"):
                reason += " (is PostgreSQL running where TAGGER_DATABASE_URL points?)"
            raise DatabaseUnavailable(f"database unavailable: {reason}") from exc
        if isinstance(exc, sa_exc.DataError):
            raise InputError(f"rejected by the database: {_first_line(exc.orig)}") from exc
        raise
    except sa_exc.TimeoutError as exc:  # pool exhausted
        raise DatabaseUnavailable(f"database pool timeout: {exc}") from exc


@contextmanager
def transaction(url: str) -> Iterator[Connection]:
    """A connection inside one transaction, committed on success; driver errors translated."""
    with translate_errors(), get_engine(url).begin() as conn:
        yield conn


@contextmanager
def session(url: str) -> Iterator[Connection]:
    """One connection held for a whole command (its temporary tables live as long), transactions begun
    by the caller (``with conn.begin():``); driver errors translated."""
    with translate_errors(), get_engine(url).connect() as conn:
        yield conn


def create_database_if_missing(url: str) -> bool:
    """CREATE DATABASE for a PostgreSQL URL whose database does not exist yet. True if created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with translate_errors(), admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": parsed.database}
            ).scalar()
            if exists:
                return False
            quoted = conn.dialect.identifier_preparer.quote(parsed.database)
            try:
                conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
            except (sa_exc.ProgrammingError, sa_exc.IntegrityError) as exc:
                # Another `tagger db upgrade` created it a moment ago: theirs will do.
                if getattr(exc.orig, "sqlstate", None) in (DUPLICATE_DATABASE, UNIQUE_VIOLATION):
                    return False
                raise
            return True
    finally:
        admin.dispose()


@contextmanager
def autocommit(url: str) -> Iterator[Connection]:
    """A connection without a transaction, for work that is one statement (a read: its own snapshot; a
    write: atomic by itself): no BEGIN and COMMIT round trips; driver errors translated."""
    with translate_errors(), get_engine(url).connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")
