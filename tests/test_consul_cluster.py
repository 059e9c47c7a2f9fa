"""A Consul cluster (three servers, a client agent per node) while a lease is held:
the raft leader killed, then the holder's client agent stopped; the flock probe judges
overlap, and the times are printed (docs/backends/consul.md quotes them)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, wait_until
from tests.consul_cluster import ConsulCluster

TTL = 10.0


@pytest.fixture
def consul_cluster() -> Iterator[ConsulCluster]:
    if os.environ.get("COORDINATOR_TEST_CONSUL_URL"):
        pytest.skip("needs consul agents of its own to kill")
    made = ConsulCluster(clients=2)
    yield made
    made.close()


def test_leader_killed_then_holders_agent_stopped(
    consul_cluster: ConsulCluster, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path, ["--backend", "consul"], ttl=TTL)
    try:
        for agent in consul_cluster.clients:
            # serfHealth in the session: a node lost with its agent is noticed by gossip
            # (the lock-delay is then the ttl), not only by the session's backstop TTL.
            cluster.start(
                "--url", agent.url, "--consul-node-check", probe_flags=("--slow-stop=0.5",)
            )
        cluster.wait_starts(1, timeout=TTL + 15)
        holder = cluster.holder()
        agent = consul_cluster.clients[cluster.procs.index(holder)]

        # The raft leader dies: a new one is elected, the holder keeps its lease.
        leader = consul_cluster.leader()
        assert leader is not None
        leader.stop()
        election = wait_until(lambda: consul_cluster.leader() is not None, timeout=30)
        time.sleep(TTL)  # a whole ttl of renewals through the new leader
        assert len(cluster.starts()) == 1 and not cluster.records("stop"), cluster.records()

        # The holder's client agent stops: its renewals fail, it stops its child by its
        # deadline; the session expires on the servers, then the lock-delay passes.
        agent.stop()
        stopped = time.monotonic()
        cluster.wait_starts(2, timeout=4 * TTL + 15)
        cluster.check()
        old_stop = cluster.records("stop")[0].at - stopped
        takeover = cluster.starts()[1].at - stopped
        print(
            f"consul cluster: new leader {election:.1f}s after the leader was killed, "
            f"holder undisturbed; holder's agent stopped: old child stopped after "
            f"{old_stop:.1f}s, next child after {takeover:.1f}s"
        )
        assert old_stop < TTL, old_stop
        assert takeover < 3 * TTL + 5, takeover
    finally:
        cluster.stop_all()
