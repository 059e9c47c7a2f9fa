"""PostgreSQL: one row per lock name in the table coordinator_celery_beat, created on
first use if missing (that needs CREATE on the schema once; afterwards SELECT, INSERT
and UPDATE on the table are enough, so a DBA can create it and grant only those).
A write is one INSERT ... ON CONFLICT DO UPDATE whose WHERE checks the version and the
fence, so the check and the write are one atomic statement.

The store has its own connection: the lock's sessions (coordinator.backends.postgres)
belong to the supervisor's process and end with it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import psycopg

from coordinator.backends.postgres import PostgresBackend
from coordinator.celery.store import ABSENT, EntryState, Snapshot, Store, decode, encode

TABLE = "coordinator_celery_beat"
CREATE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    name text PRIMARY KEY,
    fence bigint NOT NULL,
    version bigint NOT NULL,
    state jsonb NOT NULL
)
"""
READ = f"SELECT fence, version, state::text FROM {TABLE} WHERE name = %s"
WRITE = f"""
INSERT INTO {TABLE} AS t (name, fence, version, state)
VALUES (%(name)s, %(token)s, 1, %(state)s::jsonb)
ON CONFLICT (name) DO UPDATE SET fence = excluded.fence, version = t.version + 1,
                                 state = excluded.state
WHERE t.version = %(version)s AND t.fence <= excluded.fence
RETURNING version
"""


class PostgresStore(Store):
    def __init__(self, backend: Any, name: str, prefix: str) -> None:
        super().__init__(backend, name, prefix)
        assert isinstance(backend, PostgresBackend)
        self.pg: PostgresBackend = backend
        self.key = f"{prefix}{name}"
        self._conn: Any = None
        self._table_checked = False

    def describe(self) -> str:
        return f"row {self.key!r} of table {TABLE} on {self.pg.where}"

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            timeout = self.pg.timeout
            try:
                self._conn = psycopg.connect(
                    self.pg.conninfo,
                    autocommit=True,
                    connect_timeout=max(2, math.ceil(timeout)),
                    application_name=f"coordinator celery {self.pg.node}"[:63],
                    options=f"-c statement_timeout={int(timeout * 1000)}",
                )
            except psycopg.Error as exc:
                raise self.pg._translate(exc) from exc
        return self._conn

    def _run(self, query: str, params: Any) -> Any:
        """One statement; a connection found broken is reopened once (the server may
        have ended an idle session) before giving up."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                if not self._table_checked:
                    (exists,) = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
                    if exists is None:
                        conn.execute(CREATE)
                    self._table_checked = True
                return conn.execute(query, params).fetchone()
            except psycopg.Error as exc:
                broken = conn.broken or conn.closed
                if broken:
                    self._drop()
                if not broken or attempt == 2:
                    raise self.pg._translate(exc) from exc
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def read(self) -> Snapshot:
        row = self._run(READ, (self.key,))
        if row is None:
            return Snapshot(0, {}, ABSENT)
        fence, version, text = row
        snapshot = decode(text, str(version))
        return Snapshot(int(fence), snapshot.entries, snapshot.version)

    def write(self, token: int, entries: dict[str, EntryState], version: str) -> str:
        params = {
            "name": self.key,
            "token": token,
            "state": encode(token, entries),
            "version": int(version) if version else None,
        }
        row = self._run(WRITE, params)
        if row is None:
            self.refuse(token)
        return str(row[0])

    def close(self) -> None:
        self._drop()
        super().close()
