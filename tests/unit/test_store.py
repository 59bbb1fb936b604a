"""The store and the one status transition, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, event, select, text

from detserve.errors import StaleTransition
from detserve.service import status
from detserve.store import ModelVersion, Service, ServiceEvent, Store, utcnow

PG_URL = os.environ.get("DETSERVE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'store.db'}")
        s.migrate()
        yield s
        s.dispose()
        return
    if not PG_URL:
        pytest.skip("set DETSERVE_TEST_POSTGRES_URL (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test) "
                    "to run the store suite on PostgreSQL; .ci/run does")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    s = Store(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    s.migrate()
    yield s
    s.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def add_service(store: Store, state: str = status.DEPLOYING) -> str:
    now = utcnow()
    with store.session() as session:
        version = ModelVersion(model=uuid.uuid4().hex, version=1, status="Successful",
                               sha256="0" * 64, size_bytes=1, labels=["a"], input={}, output={},
                               created_at=now)
        session.add(version)
        session.flush()
        sid = uuid.uuid4().hex
        session.add(Service(id=sid, name="s", version_id=version.id, model="m", version=version.version,
                            flavor="cpu", compute_nodes=1, status=state, auto_stop_enabled=True,
                            auto_stop_hours=1, key_hash="k", running_seconds=0.0, created_at=now,
                            updated_at=now))
    return sid


def test_migrate_is_idempotent(store):
    store.migrate()
    assert store.ping()


def test_transition_writes_one_event(store):
    sid = add_service(store)
    old = status.transition(store, sid, status.DEPLOYING, status.RUNNING, reason="deployed")
    assert old == status.DEPLOYING
    with store.session(readonly=True) as session:
        events = session.scalars(select(ServiceEvent).where(ServiceEvent.service_id == sid)).all()
        service = session.get(Service, sid)
    assert [(e.from_status, e.to_status, e.reason) for e in events] == [("Deploying", "Running", "deployed")]
    assert service.status == status.RUNNING and service.running_since is not None
    assert service.updated_at.tzinfo is not None


def test_wrong_expected_state_changes_nothing(store):
    sid = add_service(store, status.STOPPED)
    with pytest.raises(StaleTransition, match="is Stopped"):
        status.transition(store, sid, status.RUNNING, status.STOPPING, reason="user")
    with pytest.raises(StaleTransition, match="missing"):
        status.transition(store, "nope", status.RUNNING, status.STOPPING, reason="user")
    with store.session(readonly=True) as session:
        assert session.get(Service, sid).status == status.STOPPED
        assert session.scalars(select(ServiceEvent).where(ServiceEvent.service_id == sid)).all() == []


def test_running_time_accrues_only_while_running(store):
    sid = add_service(store, status.RUNNING)
    with store.session() as session:
        session.get(Service, sid).running_since = utcnow() - timedelta(seconds=30)
    status.transition(store, sid, status.RUNNING, status.STOPPING, reason="user")
    with store.session(readonly=True) as session:
        service = session.get(Service, sid)
    assert 29.0 < service.running_seconds < 40.0 and service.running_since is None


def test_billing_stops_at_the_auto_stop_time(store):
    sid = add_service(store, status.RUNNING)
    start = utcnow() - timedelta(seconds=100)
    with store.session() as session:
        session.get(Service, sid).running_since = start
    status.transition(store, sid, status.RUNNING, status.STOPPING, reason="auto_stop",
                      billing_until=start + timedelta(seconds=60))
    with store.session(readonly=True) as session:
        assert session.get(Service, sid).running_seconds == pytest.approx(60.0, abs=0.01)


@pytest.mark.parametrize("racers", [2, 8])
def test_exactly_one_of_racing_transitions_wins(store, racers):
    # given a Deploying service and several threads that all try to move it
    sid = add_service(store)
    barrier = threading.Barrier(racers)
    wins, losses, crashes = [], [], []

    def race(target: str) -> None:
        barrier.wait()
        try:
            status.transition(store, sid, status.DEPLOYING, target, reason=target.lower())
            wins.append(target)
        except StaleTransition:
            losses.append(target)
        except Exception as exc:  # a lock error would be a bug
            crashes.append(exc)

    # when they race
    threads = [threading.Thread(target=race, args=([status.RUNNING, status.STOPPING][i % 2],))
               for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly one wins and exactly one event is written
    assert crashes == [] and len(wins) == 1 and len(losses) == racers - 1
    with store.session(readonly=True) as session:
        events = session.scalars(select(ServiceEvent).where(ServiceEvent.service_id == sid)).all()
        assert session.get(Service, sid).status == wins[0]
    assert len(events) == 1 and events[0].to_status == wins[0]


def test_the_hot_read_sees_every_committed_change_at_once(store):
    from detserve_api.auth import HOT_QUERY

    sid = add_service(store)
    row = store.first(HOT_QUERY, {"id": sid})
    assert (row.id, row.status, row.flavor, row.key_hash) == (sid, status.DEPLOYING, "cpu", "k")
    # a transition committed by another connection is what the very next read returns
    status.transition(store, sid, status.DEPLOYING, status.RUNNING, reason="test")
    assert store.first(HOT_QUERY, {"id": sid}).status == status.RUNNING
    assert store.first(HOT_QUERY, {"id": "nope"}) is None
    # values written into a one-off statement count as much as bound parameters
    assert store.first(select(Service.status).where(Service.id == sid)).status == status.RUNNING


def test_a_change_committed_between_the_read_and_the_update_wins(store):
    # given a Running service, and a second writer that moves it Running -> Stopping after this
    # transition read "Running" and before it writes. On PostgreSQL that writer is another
    # session that commits (READ COMMITTED lets it); on SQLite BEGIN IMMEDIATE keeps a second
    # session out, so the write is made on the transition's own connection right after its read
    from sqlalchemy import event, update

    sid = add_service(store, status.RUNNING)
    sqlite = store.engine.dialect.name == "sqlite"
    done = []

    def other_writer(conn, cursor, statement, params, context, executemany):
        if done or not statement.lstrip().upper().startswith("SELECT") or "services.status" not in statement:
            return
        done.append(True)
        if sqlite:
            other = cursor.connection.cursor()  # the SELECT's own cursor still holds its row
            other.execute("UPDATE services SET status = ? WHERE id = ?", (status.STOPPING, sid))
            other.close()
        else:
            with store.engine.connect() as session_b, session_b.begin():
                session_b.execute(update(Service).where(Service.id == sid).values(status=status.STOPPING))

    event.listen(store.engine, "after_cursor_execute", other_writer)
    try:
        # when this transition, which read Running, tries to move it to Failed
        with pytest.raises(StaleTransition):
            status.transition(store, sid, status.RUNNING, status.FAILED, reason="late")
    finally:
        event.remove(store.engine, "after_cursor_execute", other_writer)
    # then it loses and writes nothing: the other writer's change stands (on SQLite it shared the
    # loser's transaction, so it rolled back with it)
    assert done == [True]
    with store.session(readonly=True) as session:
        assert session.get(Service, sid).status == (status.RUNNING if sqlite else status.STOPPING)
        assert session.scalars(select(ServiceEvent).where(ServiceEvent.service_id == sid)).all() == []


def test_a_short_run_accrues_its_own_time_and_a_stop_before_the_start_none(store):
    # a service that runs a moment is billed that moment, not a rounded-up second
    sid = add_service(store)
    status.transition(store, sid, status.DEPLOYING, status.RUNNING, reason="deployed")
    status.transition(store, sid, status.RUNNING, status.STOPPING, reason="user")
    with store.session(readonly=True) as session:
        assert 0.0 <= session.get(Service, sid).running_seconds < 0.5
    # an auto stop whose time lies before the run began (re-armed, then redeployed) adds nothing
    status.transition(store, sid, status.STOPPING, status.STOPPED, reason="user")
    status.transition(store, sid, status.STOPPED, status.RUNNING, reason="deployed")
    with store.session(readonly=True) as session:
        before = session.get(Service, sid).running_seconds
    status.transition(store, sid, status.RUNNING, status.STOPPING, reason="auto_stop",
                      billing_until=utcnow() - timedelta(seconds=30))
    with store.session(readonly=True) as session:
        assert session.get(Service, sid).running_seconds == before


@contextmanager
def sent(store: Store) -> Iterator[list[str]]:
    """What the store's connections send the database meanwhile, read below SQLAlchemy and the
    driver (SQLite's trace, libpq's on PostgreSQL), so that a BEGIN or ROLLBACK of the driver's
    own shows too; on PostgreSQL the list fills when the block ends."""
    statements: list[str] = []
    sqlite = store.engine.dialect.name == "sqlite"
    traced: list[Any] = []
    log = tempfile.TemporaryFile("w+")

    def watch(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if any(dbapi_conn is seen for seen in traced):
            return
        traced.append(dbapi_conn)
        if sqlite:
            dbapi_conn.set_trace_callback(statements.append)
        else:
            dbapi_conn.pgconn.trace(log.fileno())

    event.listen(store.engine, "checkout", watch)
    try:
        yield statements
    finally:
        event.remove(store.engine, "checkout", watch)
        for dbapi_conn in traced:
            dbapi_conn.set_trace_callback(None) if sqlite else dbapi_conn.pgconn.untrace()
        log.seek(0)
        # a line: time, F (from the client) or B, length, message type, its text
        statements += [line.split("\t", 4)[4].strip() for line in log
                       if line.split("\t")[1:2] == ["F"] and line.split("\t")[3] in ("Query", "Parse")]
        log.close()


def named(statements: list[str], word: str) -> list[str]:
    return [s for s in statements if re.search(rf"\b{word}\b", s, re.IGNORECASE)]


def test_first_reads_on_the_engines_pool_in_one_statement(store):
    # given a session's connection back in the pool
    sid = add_service(store)
    pool, used = store.engine.pool, []

    def borrowed(conn, *_):
        used.append((conn.engine.pool is pool, pool.checkedout()))

    # when the hot read runs
    event.listen(store.engine, "before_cursor_execute", borrowed)
    try:
        with sent(store) as statements:
            row = store.first(select(Service.status).where(Service.id == sid))
    finally:
        event.remove(store.engine, "before_cursor_execute", borrowed)
    # then it ran on a connection of the engine's own pool, which still holds no other
    assert row.status == status.DEPLOYING
    assert used == [(True, 1)] and (pool.checkedout(), pool.checkedin()) == (0, 1)
    # and it sent its one SELECT with no transaction around it
    assert len(named(statements, "SELECT")) == 1, statements
    assert [s for w in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT") for s in named(statements, w)] == []
    if store.engine.dialect.name == "sqlite":  # nor anything else, going back to the pool either
        assert len(statements) == 1, statements


def test_a_session_after_first_on_its_connection_still_runs_in_a_transaction(store):
    # given the pool's one connection, last used by the hot read in AUTOCOMMIT
    sid = add_service(store)
    store.first(select(Service.status).where(Service.id == sid))
    assert store.engine.pool.checkedin() == 1
    # when a session on that connection writes and then fails
    with sent(store) as statements, pytest.raises(RuntimeError):
        with store.session() as session:
            session.get(Service, sid).status = status.RUNNING
            session.flush()
            raise RuntimeError("after the UPDATE was sent")
    # then the write ran inside a transaction, and the rollback undid it
    assert named(statements, "BEGIN") and named(statements, "UPDATE"), statements
    assert re.match(r"\W*ROLLBACK", statements[-1]), statements
    assert store.first(select(Service.status).where(Service.id == sid)).status == status.DEPLOYING
    if store.engine.dialect.name == "sqlite":  # BEGIN stays ours, as the connect hook set it
        with store.engine.connect() as conn:
            assert conn.connection.dbapi_connection.isolation_level is None
