"""Redis-specific faults with a server of the test's own: paused and restarted.

A restart without persistence loses the lock while its holder still runs; the holder
must stop its child and the next holder must wait the safety delay, so that the two
children never overlap. With a paused server nobody can renew: the holder stops its
child before its lease could expire, and one child runs again after the resume.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.backends.base import HolderInfo, Lease
from tests.cluster import Cluster, alive, wait_until
from tests.servers import RedisServer
from tests.store import Store

TTL = 3.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    if os.environ.get("COORDINATOR_TEST_REDIS_URL"):
        pytest.skip("needs a redis-server of its own to pause and restart")
    srv = RedisServer(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def cluster(server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, ["--backend", "redis", "--url", server.url])
    yield c
    c.stop_all()
    for record in c.starts():
        assert not alive(record.pid)


def test_paused_server_stops_the_child_before_the_lease_expires(
    cluster: Cluster, server: RedisServer
) -> None:
    for _ in range(2):
        cluster.start()
    cluster.wait_starts(1, timeout=15)
    time.sleep(0.5)
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        wait_until(lambda: cluster.records("stop"), timeout=TTL + 1)
        stopped = cluster.records("stop")[0].at
        # The last renewal was sent at most ttl/3 before the pause.
        assert stopped - paused_at < TTL, stopped - paused_at
    finally:
        server.process.send_signal(signal.SIGCONT)
    cluster.wait_starts(2, timeout=3 * TTL)
    time.sleep(1.0)
    assert len(cluster.starts()) == 2
    cluster.check()


def test_restart_without_persistence_never_gives_two_children(
    cluster: Cluster, server: RedisServer
) -> None:
    for _ in range(3):
        cluster.start(probe_flags=("--slow-stop=0.5",))
    cluster.wait_starts(1, timeout=15)
    time.sleep(0.5)
    server.restart()  # every key is gone; the holder does not know yet
    wait_until(lambda: cluster.records("stop"), timeout=TTL + 1)
    cluster.wait_starts(2, timeout=3 * TTL)
    time.sleep(1.0)
    assert len(cluster.starts()) == 2
    cluster.check()


def test_a_restore_from_an_older_snapshot_keeps_fencing_tokens_increasing(
    server: RedisServer,
) -> None:
    """The snapshot brings back an older counter and no lock, while the lock's holder
    may still run: the newcomer's token must exceed every token handed out since, and
    it must wait the safety delay."""
    import redis

    backend = Store("redis", server.url, "t/").backend("fence")
    tokens: list[int] = []

    def take() -> Lease:
        lease = backend.acquire("fence", HolderInfo(node_id="old"))
        assert lease is not None and lease.fencing_token is not None
        tokens.append(lease.fencing_token)
        return lease

    backend.release(take())
    redis.Redis.from_url(server.url).save()
    for _ in range(3):
        backend.release(take())
    take()  # held when the server crashes
    backend.close()
    server.restart()  # SIGKILL, then the restart loads the older snapshot

    newcomer = Store("redis", server.url, "t/").backend("fence")
    lease = newcomer.acquire("fence", HolderInfo(node_id="new"))
    assert lease is not None and lease.fencing_token is not None
    assert lease.fencing_token > max(tokens), (lease.fencing_token, tokens)
    assert "the server started" in lease.state_reset
    newcomer.release(lease)
    newcomer.close()


def test_supervisors_recover_after_a_long_outage(cluster: Cluster, server: RedisServer) -> None:
    for _ in range(2):
        cluster.start()
    cluster.wait_starts(1, timeout=15)
    server.stop()
    wait_until(lambda: cluster.records("stop"), timeout=TTL + 1)
    time.sleep(2.0)
    assert all(p.poll() is None for p in cluster.procs), "a supervisor gave up"
    server.start()
    cluster.wait_starts(2, timeout=3 * TTL + 5)
    cluster.check()
