"""The fault suite on a Consul cluster: three servers and a client agent per node on
loopback, each supervisor talking to the agent of its own node, as in production.

Faults: the raft leader killed (the holder keeps its lease through the election if its
renewals get through in time), the holder's client agent stopped with kill -9 (the
node lost: no leave, so only gossip or the session's backstop TTL can tell), and the
holder's client agent restarted with its data directory: kill -9 and start (a crash,
then the service manager), or SIGTERM and start (`systemctl restart`: a client agent
leaves the cluster when terminated). The child is slow to stop (80% of the grace) in
every round. Supervisors run with --consul-node-check, so a lost node is noticed by
gossip within seconds.

`python -m tests.faults --backends consul-cluster` runs it; tests/test_consul_cluster.py
runs a short round in CI.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

from tests.cluster import Record
from tests.consul_cluster import ConsulCluster
from tests.faults.check import Round, Summary
from tests.faults.faults import Fault, _takeover, one_round, slow_stop
from tests.faults.harness import Bench, Node
from tests.store import Store

KIND = "consul-cluster"
# COORDINATOR_CONSUL_NODE_CHECK=0 runs the supervisors without --consul-node-check: a
# node lost with its agent is then noticed only by the session's backstop TTL (30 x
# ttl), longer than the suite waits, so leave out client-agent-stopped.
NODE_CHECK = os.environ.get("COORDINATOR_CONSUL_NODE_CHECK", "1") != "0"
NODES = 3


class ClusterBench(Bench):
    """Supervisors each on the client agent of its own node; no proxy."""

    def __init__(self, consul: ConsulCluster, tmp: Path) -> None:
        self.consul = consul
        store = Store("consul", consul.clients[0].url, f"faults-{uuid.uuid4().hex[:8]}/")
        super().__init__(store, None, tmp, nodes=len(consul.clients))
        self.kept: dict[str, list[bool]] = {}  # fault -> did the holder keep its lease

    def _node(self, index: int) -> Node:
        return Node(index, self.consul.clients[index].url, None)

    def command(self, node: Node) -> list[str]:
        argv = super().command(node)
        at = argv.index("--")
        return [*argv[:at], *(["--consul-node-check"] if NODE_CHECK else []), *argv[at:]]

    def takeover_bound(self) -> float:
        # Gossip marks a killed agent's node failed within seconds; then the lock-delay
        # (the ttl with --consul-node-check).
        return 4 * self.ttl + 20


def _heal(bench: ClusterBench, r: Round) -> None:
    """Start every stopped agent again (with its data directory) and wait until the
    cluster has a leader and every client agent can write."""
    for agent in [*bench.consul.servers, *bench.consul.clients]:
        if agent.process is None:
            agent.start()
    try:
        bench.consul.wait_ready(timeout=60)
    except RuntimeError as exc:
        r.problems.append(str(exc))


def _kept_or_lost(
    bench: ClusterBench, node: Node, fault: str, since: float, known: set[int], r: Round
) -> None:
    """After a fault the holder may survive: if another child starts within the wait,
    the takeover is timed from the fault; if not, the holder kept its lease and is
    stopped with SIGTERM (a handoff), which times the takeover instead."""
    assert node.process is not None
    new = bench.wait_new_child(known, 2 * bench.ttl)
    bench.kept.setdefault(fault, []).append(new is None)
    if new is not None:
        r.takeover = new.at - since
        return
    _heal(bench, r)
    node.expected_exit = True
    since = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    _takeover(bench, known, since, r)


def leader_killed(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """kill -9 of the raft leader while a lease is held. The others elect a new leader;
    the holder keeps its lease if its renewals get through in time (with
    --consul-node-check each one renews the session, which needs a leader)."""
    assert isinstance(bench, ClusterBench)
    leader = bench.consul.leader()
    if leader is None:
        r.problems.append("no raft leader before the fault")
        return
    with slow_stop(bench, bench.grace * 0.8):
        since = time.monotonic()
        leader.stop()  # SIGKILL
        _kept_or_lost(bench, node, "leader-killed", since, known, r)
    _heal(bench, r)


def client_agent_stopped(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """kill -9 of the holder's client agent: its node is lost (no leave). The holder can
    no longer renew and stops its child by its deadline; gossip marks the node failed,
    which ends the session (serfHealth); then the lock-delay."""
    assert isinstance(bench, ClusterBench)
    agent = bench.consul.clients[node.index]
    with slow_stop(bench, bench.grace * 0.8):
        since = time.monotonic()
        agent.stop()  # SIGKILL
        _takeover(bench, known, since, r)
    _heal(bench, r)


def client_agent_restart(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """kill -9 of the holder's client agent, started again at once with its data
    directory (a crash, then the service manager). Whether the holder keeps its lease
    depends on how fast the agent is back and what gossip made of it meanwhile; either
    way no two children may run at once."""
    assert isinstance(bench, ClusterBench)
    agent = bench.consul.clients[node.index]
    with slow_stop(bench, bench.grace * 0.8):
        since = time.monotonic()
        agent.stop()  # SIGKILL
        agent.start()
        _kept_or_lost(bench, node, "client-agent-restart", since, known, r)
    _heal(bench, r)


def client_agent_leave(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """SIGTERM to the holder's client agent (`systemctl restart`, the first half): a
    client agent leaves the cluster when terminated, so its node is deregistered and
    the sessions on it invalidated, then it is started again with its data directory."""
    assert isinstance(bench, ClusterBench)
    agent = bench.consul.clients[node.index]
    with slow_stop(bench, bench.grace * 0.8):
        since = time.monotonic()
        agent.stop(signal.SIGTERM)
        agent.start()
        _kept_or_lost(bench, node, "client-agent-leave", since, known, r)
    _heal(bench, r)


FAULTS: dict[str, Fault] = {
    "leader-killed": leader_killed,
    "client-agent-stopped": client_agent_stopped,
    "client-agent-restart": client_agent_restart,
    "client-agent-leave": client_agent_leave,
}


def run(faults: list[str], rounds: int, seed: int, tmp: Path) -> tuple[str, list[Summary]]:
    """Every chosen fault `rounds` times in shuffled order; the table and the rows."""
    from tests.faults.__main__ import play, table

    consul = ConsulCluster(clients=NODES)
    bench = ClusterBench(consul, tmp)
    try:
        chosen = [f for f in FAULTS if f in faults] or list(FAULTS)
        summaries = play(
            bench, chosen, rounds, seed, lambda fault, rng: one_round(bench, fault, rng, FAULTS)
        )
        title = (
            f"{KIND}: 3 servers and {NODES} client agents, ttl {bench.ttl:g}s, grace "
            f"{bench.grace:g}s, {'' if NODE_CHECK else 'no '}--consul-node-check, {NODES} "
            f"supervisors, seed {seed}"
        )
        kept = "".join(
            f"\n{fault}: the holder kept its lease in {sum(k)} of {len(k)} rounds"
            for fault, k in bench.kept.items()
        )
        return table(title, summaries) + kept, summaries
    finally:
        bench.close()
        consul.close()
