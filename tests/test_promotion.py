"""PostgreSQL standby promotion while a lease is held, with a multi-host URL and
target_session_attrs=read-write, the flock probe judging overlap.

Advisory locks are not replicated: the promoted standby grants the lock at once to
whoever asks, while a holder that was cut off from the old primary (no reset, no
reply) may still run its child until its lease deadline. The newcomer must see that
the server was just promoted and wait the safety delay.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.cluster import Cluster, run_cli
from tests.faults.proxy import Proxy
from tests.replication import StandbyServer
from tests.servers import PostgresServer, settled

TTL = 6.0


@pytest.fixture
def pair() -> Iterator[tuple[PostgresServer, StandbyServer]]:
    if os.environ.get("COORDINATOR_TEST_POSTGRES_URL"):
        pytest.skip("needs PostgreSQL servers of its own to replicate and promote")
    primary = PostgresServer()
    try:
        standby = StandbyServer(primary)
        try:
            # Both older than the ttl: a young postmaster alone would make a newcomer
            # wait, and that is not what is tested here.
            settled(primary, TTL + 1)
            settled(standby, TTL + 1)
            yield primary, standby
        finally:
            standby.close()
    finally:
        primary.close()


def url(primary_port: int, standby: StandbyServer) -> str:
    # The standby first: once promoted it is taken at once, the fastest newcomer.
    return (
        f"postgresql://{standby.USER}:{standby.PASSWORD}@127.0.0.1:{standby.port},"
        f"127.0.0.1:{primary_port}/{standby.DATABASE}?target_session_attrs=read-write"
    )


def once(primary_port: int, standby: StandbyServer, name: str) -> CompletedProcess[str]:
    return run_cli(
        "--backend", "postgres", "--url", url(primary_port, standby), "--name", name,
        "--ttl", "3", "--grace", "1", "--safety-delay", "0.2", "--", "true",
    )  # fmt: skip


def test_newcomer_on_a_promoted_standby_waits_for_a_cut_off_holder(
    pair: tuple[PostgresServer, StandbyServer], tmp_path: Path
) -> None:
    primary, standby = pair
    proxy = Proxy(primary.port)  # the holder reaches the primary through it
    cluster = Cluster(tmp_path, ["--backend", "postgres", "--url", url(proxy.port, standby)])
    try:
        cluster.start(ttl=TTL, grace=2.0, probe_flags=("--slow-stop=1",))
        cluster.wait_starts(1, timeout=20)
        time.sleep(1.0)
        # The holder is cut off (it sees neither a reset nor a reply), the primary
        # stops, the standby is promoted; a supervisor starts right after.
        proxy.stall()
        cut = time.monotonic()
        primary.stop(signal.SIGQUIT)
        standby.promote()
        # --wait-lock: a child that finds the old one running says so, then waits.
        newcomer = cluster.start(ttl=TTL, grace=2.0, probe_flags=("--wait-lock",))
        cluster.wait_starts(2, timeout=3 * TTL)
        new_child = cluster.starts()[1]
        cluster.check()  # the flock: never two children at once
        takeover = new_child.at - cut
        assert takeover >= TTL, f"the newcomer did not wait: {takeover:.2f}s"
        assert takeover < 2 * TTL + 3, takeover
        print(f"promotion with a cut-off holder: next child {takeover:.2f}s after the cut")
        cluster.stop_all()
        assert "is a standby promoted" in cluster.output(newcomer)

        # Once the checkpoint the promotion requested is older than the ttl, nobody waits.
        time.sleep(max(0.0, cut + TTL + 2.5 - time.monotonic()))
        later = once(proxy.port, standby, "later")
        assert later.returncode == 0 and "promoted" not in later.stderr, later.stderr
        # Without pg_control_checkpoint the age is unknown: every acquisition waits.
        standby.sql(
            "REVOKE EXECUTE ON FUNCTION pg_control_checkpoint() FROM PUBLIC", standby.DATABASE
        )
        blind = once(proxy.port, standby, "blind")
        assert blind.returncode == 0 and "promoted since it started" in blind.stderr, blind.stderr
    finally:
        cluster.stop_all()
        proxy.close()
