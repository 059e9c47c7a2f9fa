"""PostgreSQL: a call the supervisor abandoned on its timeout keeps running on its
thread while the next call starts on another (coordinator/events.py, Caller). The two
must not interleave on the backend's connections.

Found by the fault suite (postgres-pgbouncer, server-restart): an acquisition that
timed out while PgBouncer waited for the restarting server later dropped the lock
connection under the next acquisition, which then failed with an internal error
(exit 70). Here the abandoned call is held at that point on purpose, on a real server.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from coordinator.backends.base import HolderInfo
from coordinator.backends.postgres import PostgresBackend
from coordinator.errors import BackendUnavailable
from tests.store import Store


def test_an_abandoned_call_never_drops_a_connection_under_the_next_call(
    postgres_url: str,
) -> None:
    backend = Store("postgres", postgres_url, f"test-{uuid.uuid4().hex[:8]}/").backend()
    assert isinstance(backend, PostgresBackend)
    backend.holder("warm-up")  # the lock connection is open, as after earlier calls
    main = threading.current_thread()
    next_call_has_the_connection = threading.Event()
    real_lock_connection, real_run = backend._lock_connection, backend._run

    def lock_connection() -> Any:
        conn = real_lock_connection()
        if threading.current_thread() is main:
            next_call_has_the_connection.set()
            time.sleep(0.3)  # the abandoned call goes on meanwhile, if it may
        return conn

    def run(attr: str, query: Any, params: Any = None) -> Any:
        if threading.current_thread() is not main:
            # The abandoned call: its connection breaks while the next call starts.
            next_call_has_the_connection.wait(timeout=1.0)
            backend._drop("_lock_conn")
            raise BackendUnavailable("postgres: server closed the connection unexpectedly")
        return real_run(attr, query, params)

    backend._lock_connection = lock_connection  # type: ignore[method-assign]
    backend._run = run  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def abandoned() -> None:
        try:
            backend.acquire("race", HolderInfo(node_id="node-a"))
        except BackendUnavailable:
            pass
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=abandoned, daemon=True)
    try:
        thread.start()
        time.sleep(0.1)  # the supervisor gave up on it and calls again
        lease = backend.acquire("race", HolderInfo(node_id="node-b"))
        thread.join(timeout=5)
        assert not errors, errors
        assert lease is not None
        backend.release(lease)
    finally:
        backend.close()
