"""The store: one engine and session factory over SQLite (default) or PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from detserve.store.tables import Base, ModelVersion, Service, ServiceEvent, utcnow

__all__ = ["Store", "Base", "ModelVersion", "Service", "ServiceEvent", "utcnow"]

MIGRATIONS = Path(__file__).with_name("migrations")


class Store:
    """Owns the engine; hands out sessions that commit on success and roll back on error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_engine = self.engine.execution_options(detserve_readonly=True)
        self._readers = sessionmaker(self._read_engine, expire_on_commit=False)
        file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        self._sqlite_file = file if file and not file.startswith(":memory:") else None
        self._local = threading.local()
        self._statements: OrderedDict[int, tuple[Any, Any, tuple[str, ...], Any]] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A unit of work: commit at the end, roll back on any exception."""
        factory = self._readers if readonly else self._sessions
        with factory() as session, session.begin():
            yield session

    def first(self, statement: Any, params: dict[str, Any] | None = None) -> Any:
        """One row of a read-only Core statement over plain columns (the hot path: every
        prediction's auth check), without an ORM session.

        On SQLite it is one autocommit SELECT on this thread's own connection: SQLAlchemy's
        BEGIN, connection checkout, result processing and ROLLBACK cost ten times the query
        itself. Columns come back as the driver gives them, so select strings and integers.
        """
        path = self._sqlite_file
        if path is None:
            with self._read_engine.connect() as conn:
                return conn.execute(statement, params or {}).first()
        compiled, names, row_type = self._compiled(statement)
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            db.execute("PRAGMA query_only=ON")
        bound = compiled.construct_params(params or {})  # with the values written in the statement
        row = db.execute(compiled.string, tuple(bound[n] for n in names)).fetchone()
        return None if row is None else row_type(*row)

    def _compiled(self, statement: Any) -> tuple[Any, tuple[str, ...], Any]:
        with self._lock:
            hit = self._statements.get(id(statement))
            if hit is not None and hit[0] is statement:
                self._statements.move_to_end(id(statement))
                return hit[1:]
        compiled = statement.compile(dialect=self.engine.dialect)
        row_type = namedtuple("Row", [c.key for c in statement.selected_columns])  # type: ignore[misc]
        hit = (statement, compiled, tuple(compiled.positiontup or ()), row_type)
        with self._lock:
            self._statements[id(statement)] = hit  # holding the statement keeps its id unique
            while len(self._statements) > 64:  # module-level queries stay; one-off ones go
                self._statements.popitem(last=False)
        return hit[1:]

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


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, future=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets the API read while a worker writes; the busy timeout rides out short locks.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        # Take over BEGIN from pysqlite so that writers can ask for BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # A writer takes the write lock up front: a read-then-write transaction that only
        # upgraded later would fail with SQLITE_BUSY instead of waiting its turn.
        readonly = conn.get_execution_options().get("detserve_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine
