"""PgBouncer in front of a real server: session pooling carries the lock (handover and
crash failover with the flock probe); transaction and statement pooling are refused
with exit code 3."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, run_cli
from tests.pooler import PgBouncer
from tests.servers import PostgresServer, settled


@pytest.fixture(scope="module")
def pooler() -> Iterator[PgBouncer]:
    if os.environ.get("COORDINATOR_TEST_POSTGRES_URL"):
        pytest.skip("needs a PostgreSQL server of its own to put PgBouncer in front of")
    server = settled(PostgresServer())
    try:
        bouncer = PgBouncer(server)
        yield bouncer
        bouncer.close()
    finally:
        server.close()


def advisory_locks(server: PostgresServer) -> int:
    [(count,)] = server.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
    return int(count)  # type: ignore[call-overload]


def test_session_pooling_hands_over_and_fails_over(pooler: PgBouncer, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ["--backend", "postgres", "--url", pooler.url_for("session")])
    try:
        for _ in range(3):
            cluster.start(ttl=3.0, grace=1.0)
        cluster.wait_starts(1, timeout=20)
        first = cluster.holder()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0
        stopped = cluster.records("stop")[0].at
        cluster.wait_starts(2, timeout=10)
        handover = cluster.starts()[1].at - stopped
        # A crash: PgBouncer sees the client go, resets the server session (DISCARD
        # ALL), and the lock goes with it.
        second = cluster.holder()
        second.kill()
        killed = time.monotonic()
        cluster.wait_starts(3, timeout=15)
        failover = cluster.starts()[2].at - killed
        cluster.check()
        assert handover < 1.0, handover
        assert failover < 5.0, failover
        print(f"through PgBouncer: handover {handover:.3f}s, failover {failover:.3f}s")
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_transaction_and_statement_pooling_are_refused_with_exit_3(
    pooler: PgBouncer, mode: str
) -> None:
    start = time.monotonic()
    done = run_cli(
        "--backend", "postgres", "--url", pooler.url_for(mode), "--ttl", "3",
        "--grace", "1", "--name", "pooled", "--", "true", timeout=30,
    )  # fmt: skip
    took = time.monotonic() - start
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("coordinator: error:")]
    assert len(errors) == 1, done.stderr
    assert "transaction mode" in errors[0] and "session pooling" in errors[0]
    assert pooler.server.PASSWORD not in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert took < 15, took
    # The pooler keeps its server sessions: the refused attempt left no lock in them.
    assert advisory_locks(pooler.server) == 0
