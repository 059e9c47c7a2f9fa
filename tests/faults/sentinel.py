"""The Sentinel bench: a primary, one replica (COORDINATOR_FAULT_SENTINEL_REPLICAS for
more) and three sentinels on loopback, three supervisors with a `redis+sentinel://`
URL, and two faults while a lease is held:

- `primary-killed`: SIGKILL to the primary; once Sentinel has promoted the replica, a
  service manager brings the old primary back (empty: no persistence), and Sentinel
  turns it into a replica of the new one;
- `sentinel-failover`: `SENTINEL FAILOVER`, the planned switch: the old primary stays
  writable for about 10 s before Sentinel demotes it.

A round ends when a new child runs; the takeover is timed from the fault. Before the
next round the group is waited for until it is whole again (every server up, the
replica online, every sentinel agreeing), which is not timed.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

from tests.faults.check import Round, Summary
from tests.faults.faults import judge
from tests.faults.harness import Bench, Node
from tests.servers import SentinelGroup
from tests.store import Store

KIND = "redis-sentinel"
PROMOTION_LIMIT = 30.0  # seconds for Sentinel to promote the replica
# Replicas of the group the runner starts (the pytest round uses one).
REPLICAS = int(os.environ.get("COORDINATOR_FAULT_SENTINEL_REPLICAS", "1"))


class SentinelBench(Bench):
    """Nodes talk to the sentinels and whichever primary they name: no proxies."""

    def __init__(self, group: SentinelGroup, store: Store, tmp: Path) -> None:
        self.group = group
        super().__init__(store, None, tmp)

    def _node(self, index: int) -> Node:
        return Node(index, self.store.url, None)

    def takeover_bound(self) -> float:
        # Failure detection and election, the old lock's remaining ttl, then the old
        # primary back as a replica (Sentinel demotes a stale primary after ~10 s) and
        # synced: WAIT needs a replica before the next child may start.
        return 4 * self.ttl + 45


def _takeover(bench: Bench, known: set[int], since: float, result: Round) -> None:
    new = bench.wait_new_child(known, bench.takeover_bound())
    if new is None:
        result.problems.append(f"no child ran again within {bench.takeover_bound():.0f}s")
    else:
        result.takeover = new.at - since


def primary_killed(bench: SentinelBench, result: Round, known: set[int]) -> None:
    primary = bench.group.current_primary()
    since = time.monotonic()
    primary.stop(signal.SIGKILL)
    while bench.group.primary_port() in (primary.port, None):
        if time.monotonic() - since > PROMOTION_LIMIT:
            result.problems.append(f"Sentinel promoted no replica within {PROMOTION_LIMIT:g}s")
            break
        time.sleep(0.05)
    primary.start()
    _takeover(bench, known, since, result)


def sentinel_failover(bench: SentinelBench, result: Round, known: set[int]) -> None:
    since = time.monotonic()
    bench.group.ask("SENTINEL", "FAILOVER", bench.group.SERVICE)
    _takeover(bench, known, since, result)


FAULTS = {"primary-killed": primary_killed, "sentinel-failover": sentinel_failover}


def one_round(bench: SentinelBench, fault: str, rng: random.Random) -> Round:
    result = Round(fault)
    try:
        bench.group.wait_ready()
        bench.wait_running(bench.takeover_bound())
    except (TimeoutError, RuntimeError) as exc:
        result.problems.append(f"before the fault: {exc}")
        result.problems += bench.restart_dead()
        return result
    time.sleep(rng.uniform(0, bench.ttl / 2))  # a different point of the renewal cycle
    known = bench.probe_pids()
    FAULTS[fault](bench, result, known)
    return judge(bench, known, result)


def run_sentinel(
    faults: list[str], rounds: int, seed: int, tmp: Path, group: SentinelGroup | None = None
) -> tuple[str, list[Summary]]:
    """Every fault of this bench named in `faults`, `rounds` times, shuffled, on `group`
    (else on a group of its own)."""
    from tests.faults.__main__ import play, table  # the runner's own loop and table

    own = group is None
    group = SentinelGroup(tmp, replicas=REPLICAS) if group is None else group
    store = Store("redis", group.url, f"faults-{uuid.uuid4().hex[:8]}/")
    bench = SentinelBench(group, store, tmp)
    try:
        chosen = [f for f in FAULTS if f in faults]
        summaries = play(
            bench, chosen, rounds, seed, lambda fault, rng: one_round(bench, fault, rng)
        )
        title = (
            f"{KIND}: ttl {bench.ttl:g}s, grace {bench.grace:g}s, {len(bench.nodes)} "
            f"supervisors, 1 primary, {len(group.servers) - 1} replica(s), 3 sentinels, "
            f"seed {seed}"
        )
        return table(title, summaries), summaries
    finally:
        bench.close()
        if own:
            group.close()
