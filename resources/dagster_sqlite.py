"""Dagster's SQLite storage for a local instance (the demo, catch-up, `make ui`), with one
SQLAlchemy engine per database file and no fsync per commit.

Dagster's SQLite run and event-log storages create a new engine for every connection, and a new
engine's first connect initialises its dialect with queries of its own: storing one asset or
check event opens up to seven (the run's file, then the cross-run index). Here each storage keeps
one engine per file. The pool is still NullPool: a connection is opened and closed for each use
as before, so no connection holds a file between statements, and every commit is visible at once
to other processes (the webserver, the daemon, other runs).

Nor is each commit synced to disk (`synchronous=OFF`): Dagster keeps these files in WAL mode, and
closing a file's last connection checkpoints the WAL into it (the change the webserver watches for
a run's live log), an fsync each time. A process killed mid-run loses nothing it committed; only
an operating-system crash or a power cut can lose or damage the last writes. That is the trade
the design allows: the instance's database is not the system of record (the lake's ledger is, and
the next sensor tick repairs a lost Dagster database: delete `$DAGSTER_HOME/history` if it is
ever damaged). Deployments keep their instance in PostgreSQL (deploy/dagster-postgres.yaml).

An empty day's mart run stores 92 events: its Dagster run took 2.8-3.8 s, now 1.7-2.2 s.

The files are where Dagster's own SQLite storage keeps them, so an existing instance keeps its
runs. This overrides Dagster's private `connect`/`_connect` (Dagster is pinned);
tests/test_dagster_sqlite.py checks what the UI and the sensors rely on.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dagster._core.storage.base_storage import DagsterStorage
from dagster._core.storage.event_log import SqliteEventLogStorage as DagsterSqliteEventLogStorage
from dagster._core.storage.runs import SqliteRunStorage as DagsterSqliteRunStorage
from dagster._core.storage.schedules import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool


def _engine(conn_string: str) -> Engine:
    engine = create_engine(
        conn_string,
        poolclass=NullPool,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
    )

    @event.listens_for(engine, "connect")
    def _no_fsync(dbapi_connection, _record) -> None:
        dbapi_connection.execute("pragma synchronous = off")

    return engine


class _Engines:
    """An engine per connection string, made on first use; the most recently used `keep` are
    kept (a webserver reads the events of many runs over its life). Thread-safe."""

    def __init__(self, keep: int = 32) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def __call__(self, conn_string: str) -> Engine:
        with self._lock:
            engine = self._engines.pop(conn_string, None) or _engine(conn_string)
            self._engines[conn_string] = engine
            while len(self._engines) > self._keep:
                self._engines.popitem(last=False)
            return engine


class SqliteRunStorage(DagsterSqliteRunStorage):
    """Runs in `$DAGSTER_HOME/history/runs.db`, through one engine."""

    def __init__(self, conn_string: str, inst_data=None) -> None:
        super().__init__(conn_string, inst_data)
        self._engines = _Engines()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self._engines(self._conn_string).connect() as conn, conn.begin():
            yield conn


class SqliteEventLogStorage(DagsterSqliteEventLogStorage):
    """Each run's events in `$DAGSTER_HOME/history/runs/<run id>.db` and the cross-run index in
    `index.db` there, through one engine per file."""

    def __init__(self, base_dir: str, inst_data=None) -> None:
        self._engines = _Engines()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # As Dagster's, without a new engine (and its disposal) per connection.
        with self._db_lock:
            engine = self._engines(self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn


class SqliteStorage(DagsterSqliteStorage):
    """The instance's storage (`storage: custom:` in dagster.yaml, `base_dir` its DAGSTER_HOME):
    runs and events as above, schedules as Dagster keeps them, each in the directory Dagster's
    own SQLite storage names."""

    def __init__(self, base_dir: str, inst_data=None) -> None:
        # Dagster's __init__ builds its own run and event storages: these replace them.
        self.base_dir = base_dir
        self._inst_data = inst_data
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = SqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        DagsterStorage.__init__(self)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> SqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)
