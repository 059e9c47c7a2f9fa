"""The faults, one function each, and the round that applies one and judges it.

Every fault starts while a child runs, at a random point of the renewal cycle. A round
ends when a new child runs; it records how long that took (from the fault, or from the
heal when nothing can happen before it), how long the new child ran beside the old
one (the flock tells), and any process of an earlier child still alive.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Mapping

from tests.cluster import Record
from tests.faults.check import Round, overlap
from tests.faults.harness import NAME, Bench, Node, signal_all

Fault = Callable[[Bench, Node, Record, set[int], Round, random.Random], None]


def _takeover(bench: Bench, known: set[int], since: float, result: Round) -> Record | None:
    new = bench.wait_new_child(known, bench.takeover_bound())
    if new is None:
        result.problems.append(f"no child ran again within {bench.takeover_bound():.0f}s")
    else:
        result.takeover = new.at - since
    return new


def _signal_holder(signum: int) -> Fault:
    def fault(
        bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
    ) -> None:
        assert node.process is not None
        node.expected_exit = True
        since = time.monotonic()
        node.process.send_signal(signum)
        _takeover(bench, known, since, r)

    return fault


def ignores_term(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """SIGTERM to a holder whose child ignores SIGTERM: SIGKILL after the grace."""
    bench.ignore_term.touch()
    try:
        _signal_holder(signal.SIGTERM)(bench, node, child, known, r, rng)
    finally:
        bench.ignore_term.unlink()


def blackhole(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """The holder's connections stall (no reset, no reply) until another node took over."""
    assert node.proxy is not None
    node.proxy.stall()
    since = time.monotonic()
    try:
        _takeover(bench, known, since, r)
        time.sleep(rng.uniform(0, 1))
    finally:
        node.proxy.heal()


def server_pause(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """SIGSTOP the whole server for 1.2-2 ttl; the takeover is timed from SIGCONT."""
    pids = bench.server_pids()
    signal_all(pids, signal.SIGSTOP)
    try:
        time.sleep(bench.ttl * rng.uniform(1.2, 2.0))
    finally:
        signal_all(pids, signal.SIGCONT)
    _takeover(bench, known, time.monotonic(), r)


def server_restart(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """Redis without persistence, PostgreSQL immediate (crash) restart, Consul dev agent."""
    assert bench.server is not None
    since = time.monotonic()
    bench.server.restart()
    if bench.kind == "consul":
        # The dev agent forgets everything, its Raft index included: the one case where
        # Consul's tokens may go back (docs/safety.md, the token table).
        bench.data_lost_at.append(time.monotonic())
    _takeover(bench, known, since, r)


@contextlib.contextmanager
def slow_stop(bench: Bench, seconds: float) -> Iterator[None]:
    """Meanwhile the probe takes `seconds` to stop on SIGTERM: a holder that stops its
    child gracefully after its lock went would overlap the next one."""
    bench.slow_stop.write_text(f"{seconds:.3f}")
    try:
        yield
    finally:
        bench.slow_stop.unlink()


def sessions_ended(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """PostgreSQL: pg_terminate_backend on every session of the holder at once (the
    lock's and the beacon's), as an operator would, with a child slow to stop."""
    with slow_stop(bench, 0.7):
        since = time.monotonic()
        ended = bench.store.end_sessions(f"node{node.index}")
        if ended < 2:
            r.problems.append(f"ended {ended} sessions of node{node.index}, expected 2 or more")
        _takeover(bench, known, since, r)


def connections_reset(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """PostgreSQL: the holder's proxy resets all of its connections (a pooler or proxy
    restart), so every session of the holder ends at once; child slow to stop."""
    assert node.proxy is not None
    with slow_stop(bench, 0.7):
        since = time.monotonic()
        node.proxy.reset()
        _takeover(bench, known, since, r)


def lock_removed(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """DEL, pg_terminate_backend, session destroy, or the lock file unlinked."""
    since = time.monotonic()
    bench.store.delete_lock(NAME)
    _takeover(bench, known, since, r)


def session_destroyed_slow_stop(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """Consul: the holder's session destroyed out of band while its child takes most of
    the grace to stop. The holder's watch sees it at once; the lock-delay covers the stop."""
    with slow_stop(bench, bench.grace * 0.8):
        lock_removed(bench, node, child, known, r, rng)


def agent_restart(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """Consul: the holder's agent restarts (a dev agent, so with everything it knew),
    while the holder's child takes most of the grace to stop."""
    assert bench.server is not None
    with slow_stop(bench, bench.grace * 0.8):
        server_restart(bench, node, child, known, r, rng)


def _pause(
    bench: Bench, pids: list[int], known: set[int], r: Round, rng: random.Random
) -> tuple[Record | None, float]:
    """SIGSTOP `pids` until another node took over, then SIGCONT them (last first).
    A frozen holder keeps a file lock (the kernel holds it for the process), so there
    the pause lasts 1.2-2 ttl and the takeover comes after SIGCONT."""
    signal_all(pids, signal.SIGSTOP)
    since = time.monotonic()
    try:
        if bench.networked:
            new = _takeover(bench, known, since, r)
        else:
            new = bench.wait_new_child(known, bench.ttl * rng.uniform(1.2, 2.0))
        time.sleep(rng.uniform(0, 1))
    finally:
        resumed = time.monotonic()
        signal_all(pids[::-1], signal.SIGCONT)
    if new is None and not bench.networked:
        new = _takeover(bench, known, since, r)
    return new, resumed


def supervisor_pause(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """SIGSTOP the holder's supervisor alone: its watchdog kills the child in time."""
    assert node.process is not None
    _pause(bench, [node.process.pid], known, r, rng)


def node_pause(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """SIGSTOP the holder's supervisor, watchdog, child and grandchild, as a frozen host
    would be; then time how long the old child lives on after SIGCONT (the child is
    resumed first, the worst order)."""
    assert node.process is not None
    watchdog = node.watchdog()
    if watchdog is None:
        r.problems.append(f"node{node.index} runs a child but no watchdog")
        return
    family = [e.pid for e in bench.events() if e.event == "grandchild" and e.ppid == child.pid]
    new, resumed = _pause(bench, [node.process.pid, watchdog, child.pid, *family], known, r, rng)
    if new is not None and (start := bench.wait_start(new.pid, bench.takeover_bound())):
        r.ran_after_resume = max(0.0, start.at - resumed)


FAULTS: dict[str, Fault] = {
    "kill-9": _signal_holder(signal.SIGKILL),
    "sigterm": _signal_holder(signal.SIGTERM),
    "blackhole": blackhole,
    "server-pause": server_pause,
    "server-restart": server_restart,
    "lock-removed": lock_removed,
    "supervisor-pause": supervisor_pause,
    "node-pause": node_pause,
    "ignores-term": ignores_term,
    "sessions-ended": sessions_ended,
    "connections-reset": connections_reset,
    "session-destroyed-slow-stop": session_destroyed_slow_stop,
    "agent-restart": agent_restart,
}
NEEDS_NETWORK = {"blackhole", "server-pause", "server-restart"}
NEEDS_OWN_SERVER = {"server-pause", "server-restart", "agent-restart"}
# Only where the lock is a server session: elsewhere the holder reconnects and keeps it.
POSTGRES_ONLY = {"sessions-ended", "connections-reset"}
CONSUL_ONLY = {"session-destroyed-slow-stop", "agent-restart"}


def applicable(bench: Bench) -> list[str]:
    names = [
        n
        for n in FAULTS
        if (n not in CONSUL_ONLY or bench.kind == "consul")
        and (n not in POSTGRES_ONLY or bench.kind == "postgres")
    ]
    if not bench.networked:
        names = [n for n in names if n not in NEEDS_NETWORK]
    if bench.server is None:
        names = [n for n in names if n not in NEEDS_OWN_SERVER]
    return names


def one_round(
    bench: Bench, fault: str, rng: random.Random, faults: Mapping[str, Fault] | None = None
) -> Round:
    """`faults`: where to find `fault` (a bench's own faults besides FAULTS)."""
    result = Round(fault)
    try:
        node, child = bench.wait_running(bench.takeover_bound())
    except TimeoutError as exc:
        result.problems.append(f"before the fault: {exc}")
        result.problems += bench.restart_dead()
        return result
    time.sleep(rng.uniform(0, bench.ttl / 2))  # a different point of the renewal cycle
    known = bench.probe_pids()
    (faults or FAULTS)[fault](bench, node, child, known, result, rng)
    return judge(bench, known, result)


def judge(bench: Bench, known: set[int], result: Round) -> Round:
    """After a fault: the next child's overlap with the old ones, the old children left
    running (killed, so that they do not spoil the next rounds), the dead supervisors."""
    new = bench.wait_new_child(known, 0)
    if new is not None:
        bench.wait_start(new.pid, bench.takeover_bound())
        result.overlap = overlap(bench.events(), new.pid)
    for pid in known:
        if bench.ours(pid):
            result.orphans += 1
            os.kill(pid, signal.SIGKILL)
    result.problems += bench.restart_dead()
    return result
