"""The store: one engine and session factory over SQLite (default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from detserve.store.tables import Base, ModelVersion, Service, ServiceEvent, utcnow

__all__ = ["Store", "Base", "ModelVersion", "Service", "ServiceEvent", "utcnow"]

MIGRATIONS = Path(__file__).with_name("migrations")
ALONE = "detserve_alone"  # SQLite execution option: statements with no BEGIN (Store.first)


class Store:
    """Owns the engine; hands out sessions that commit on success and roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(detserve_readonly=True)
        self._readers = sessionmaker(self._read_engine, expire_on_commit=False)
        # one statement needs no transaction around it: no BEGIN and no ROLLBACK per read. A
        # proxy of the engine, not a second engine: it draws on the same pool. SQLite's driver
        # already leaves BEGIN to us (the begin hook skips it); an isolation level there would be
        # reset with a PRAGMA on every return to the pool
        alone = {ALONE: True} if self.engine.dialect.name == "sqlite" else {
            "isolation_level": "AUTOCOMMIT"}
        self._statements = self.engine.execution_options(**alone)

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A unit of work: commit at the end, roll back on any exception."""
        factory = self._readers if readonly else self._sessions
        with factory() as session, session.begin():
            yield session

    def first(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        """One row of a read-only Core statement (the auth check of every prediction), without
        an ORM session or a transaction (a single statement reads a consistent state on its
        own); None when there is none."""
        with self._statements.connect() as conn:
            return conn.execute(statement, params or {}).first()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        if self.url.startswith("sqlite:///"):
            Path(self.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def ping(self) -> bool:
        """True while the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        self.engine.dispose()


# Nothing waits on the database without a bound: a lock held too long, a hung or unreachable
# server fails the call (the API answers 503) instead of holding its caller.
BUSY_SECONDS = 10
CONNECT_SECONDS = 5
STATEMENT_SECONDS = 15


def _make_engine(url: str) -> Engine:
    """The engine for `url`."""
    if url.startswith("postgresql"):
        # connect_args' options replace the URL's own (e.g. -csearch_path=...): keep both
        given = make_url(url).query.get("options", "")
        return create_engine(url, pool_pre_ping=True, pool_timeout=BUSY_SECONDS, connect_args={
            "connect_timeout": CONNECT_SECONDS,
            "options": f"{given if isinstance(given, str) else ' '.join(given)} "
                       f"-c statement_timeout={STATEMENT_SECONDS * 1000} "
                       f"-c lock_timeout={BUSY_SECONDS * 1000}".strip(),
            # the server's timeouts cannot end a wait on a dead link: the kernel's can
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3, "tcp_user_timeout": STATEMENT_SECONDS * 1000})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_timeout=BUSY_SECONDS)
    engine = create_engine(url, connect_args={"timeout": BUSY_SECONDS, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets the API read while a worker writes; the busy timeout rides out short locks.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        # Take over BEGIN from pysqlite so that writers can ask for BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get(ALONE, False):
            return  # Store.first: SQLite runs a lone statement as a transaction of its own
        # A writer takes the write lock up front: a read-then-write transaction that only
        # upgraded later would fail with SQLITE_BUSY instead of waiting its turn.
        conn.exec_driver_sql("BEGIN" if options.get("detserve_readonly", False) else "BEGIN IMMEDIATE")

    return engine
