"""The supervisor loop against a scripted in-process backend (real child processes).

These complement, never replace, the real-server tests: they make a backend hang,
fail or change its answer at an exact moment, which a real server cannot do on cue.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.config import Config
from coordinator.errors import EXIT_WAIT_TIMEOUT, BackendRejected, BackendUnavailable, LeaseLost
from coordinator.supervisor import Supervisor
from tests.cluster import Cluster, alive

TTL, GRACE = 1.5, 0.2


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, acquire: list[str], renew: list[str], state_reset: str = "") -> None:
        self.acquire_plan, self.renew_plan = acquire, renew
        self.state_reset = state_reset
        self.calls: list[tuple[str, float]] = []
        self.leases: list[Lease] = []
        self.released: list[str] = []
        self.unblock = threading.Event()
        self.token = 0

    def _next(self, plan: list[str], default: str) -> str:
        return plan.pop(0) if plan else default

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        sent = time.monotonic()
        self.calls.append(("acquire", sent))
        step = self._next(self.acquire_plan, "none")
        if step == "unavailable":
            raise BackendUnavailable("scripted outage")
        if step == "rejected":
            raise BackendRejected("scripted: wrong password")
        if step == "none":
            return None
        if step == "slow":  # wins, but only after the supervisor gave up on the call
            time.sleep(0.6)
        self.token += 1
        ready = step != "unready"
        lease = Lease(name, f"t{self.token}", self.token, sent + TTL, self.state_reset, ready)
        self.leases.append(lease)
        return lease

    def renew(self, lease: Lease) -> Lease:
        sent = time.monotonic()
        self.calls.append(("renew", sent))
        step = self._next(self.renew_plan, "ok")
        if step == "hang":
            self.unblock.wait()
            raise BackendUnavailable("scripted: unblocked")
        if step == "unavailable":
            raise BackendUnavailable("scripted outage")
        if step == "lost":
            raise LeaseLost("scripted: not yours")
        ready = step != "unready"
        renewed = Lease(lease.name, lease.token, lease.fencing_token, sent + TTL, ready=ready)
        self.leases.append(renewed)
        return renewed

    def release(self, lease: Lease) -> None:
        self.calls.append(("release", time.monotonic()))
        self.released.append(lease.token)

    def holder(self, name: str) -> HolderInfo | None:
        return None

    def wait(self, name: str, timeout: float) -> None:
        self.calls.append(("wait", time.monotonic()))
        time.sleep(min(timeout, 0.05))


@pytest.fixture
def probe(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path, [])


def supervise(backend: ScriptedBackend, probe: Cluster, *flags: str, **kwargs: float) -> int:
    config = Config(
        command=(
            sys.executable,
            str(Path(__file__).with_name("probe.py")),
            str(probe.lock),
            str(probe.log),
            *flags,
        ),
        name="unit",
        ttl=TTL,
        grace=GRACE,
        wait_timeout=kwargs.pop("wait_timeout", 0.6),
        **kwargs,
    )
    try:
        return Supervisor(config, backend).run()
    finally:
        backend.unblock.set()


def test_a_hung_renewal_stops_the_child_before_the_lease_expires(probe: Cluster) -> None:
    backend = ScriptedBackend(["lease"], ["hang"] * 20)
    assert supervise(backend, probe) == EXIT_WAIT_TIMEOUT
    [stop] = probe.records("stop")
    deadline = backend.leases[0].deadline
    assert stop.at < deadline, f"child stopped {stop.at - deadline:.3f}s after the deadline"
    assert stop.at > deadline - GRACE - 0.5  # not long before the fencing point either
    assert [c for c, _ in backend.calls].count("acquire") >= 2  # back to contending


def test_a_definite_no_on_renewal_stops_the_child_at_once(probe: Cluster) -> None:
    backend = ScriptedBackend(["lease"], ["lost"])
    assert supervise(backend, probe) == EXIT_WAIT_TIMEOUT
    [stop] = probe.records("stop")
    renew_at = next(t for c, t in backend.calls if c == "renew")
    assert stop.at - renew_at < 0.3
    # A lost lease is not ours to release.
    assert "release" not in [c for c, _ in backend.calls]


def test_transient_renewal_failures_do_not_stop_the_child(probe: Cluster) -> None:
    backend = ScriptedBackend(["lease"], ["unavailable", "ok", "unavailable", "ok"])
    # Run past several renewals and fencing points, then stop as an operator would.
    timer = threading.Timer(2.5, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    code = supervise(backend, probe)
    timer.cancel()
    starts = probe.records("start")
    assert code == 0  # stopped by our SIGTERM; the probe exits 0 on TERM
    assert len(starts) == 1
    assert [c for c, _ in backend.calls].count("renew") >= 4


def test_outage_at_start_keeps_waiting_then_runs(probe: Cluster) -> None:
    backend = ScriptedBackend(["unavailable", "unavailable", "none", "lease"], [])
    assert supervise(backend, probe, "--exit-soon", wait_timeout=10.0) == 0
    [stop] = probe.records("stop")
    release_at = next(t for c, t in backend.calls if c == "release")
    assert release_at > stop.at  # released only after the child was reaped


def test_rejected_credentials_end_the_program(probe: Cluster) -> None:
    backend = ScriptedBackend(["rejected"], [])
    with pytest.raises(BackendRejected):
        supervise(backend, probe)
    assert not probe.records()


def test_state_reset_waits_the_safety_delay(probe: Cluster) -> None:
    backend = ScriptedBackend(["lease"], [], state_reset="scripted state loss")
    acquired_before = time.monotonic()
    assert supervise(backend, probe, "--exit-soon", safety_delay=0.8) == 0
    [start] = probe.starts()
    assert start.at - acquired_before >= 0.8
    # Renewals went on during the delay.
    assert [c for c, _ in backend.calls].count("renew") >= 1


def test_an_acquisition_that_wins_after_its_timeout_is_released(probe: Cluster) -> None:
    # The call timeout is ttl/6 = 0.25 s; the slow acquire wins after 0.6 s, when the
    # supervisor has moved on. Left alone, that lock would be held with no child.
    backend = ScriptedBackend(["slow"], [])
    assert supervise(backend, probe, wait_timeout=1.2) == EXIT_WAIT_TIMEOUT
    time.sleep(0.3)
    assert backend.released == [backend.leases[0].token]
    assert not probe.records()


def test_the_child_waits_until_the_backend_is_ready(probe: Cluster) -> None:
    # PostgreSQL's case: an earlier holder's "child running" beacon is still taken, so
    # a child started now could not be seen by newcomers if this lock were lost.
    backend = ScriptedBackend(["unready"], ["unready", "unready", "ok"])
    assert supervise(backend, probe, "--exit-soon", wait_timeout=5.0) == 0
    [start] = probe.starts()
    renewals = [t for c, t in backend.calls if c == "renew"]
    assert len(renewals) >= 3
    assert start.at > renewals[2], "the child started before the backend was ready"
    assert renewals[2] - backend.calls[0][1] < 1.0  # polled, not at the renew interval


class HoldOffBackend(ScriptedBackend):
    """Leases that ask the supervisor to hold off, and losses that need a kill at once."""

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        lease = super().acquire(name, info)
        if lease is None:
            return None
        return Lease(
            lease.name,
            lease.token,
            lease.fencing_token,
            lease.deadline,
            hold_off=0.4,
            hold_off_reason="scripted",
        )

    def renew(self, lease: Lease) -> Lease:
        if self.renew_plan[:1] == ["lost now"]:
            self.renew_plan.pop(0)
            self.calls.append(("renew", time.monotonic()))
            raise LeaseLost("scripted: every session ended", stop_now=True)
        return super().renew(lease)


def test_a_hold_off_delays_the_child(probe: Cluster) -> None:
    backend = HoldOffBackend(["lease"], [])
    assert supervise(backend, probe, "--exit-soon", wait_timeout=5.0) == 0
    acquired_at = next(t for c, t in backend.calls if c == "acquire")
    [start] = probe.starts()
    assert start.at - acquired_at >= 0.4


def test_a_loss_that_needs_it_kills_the_child_without_grace(probe: Cluster) -> None:
    """A child that ignores SIGTERM dies at once, not after the grace."""
    backend = HoldOffBackend(["lease"], ["ok", "lost now"])
    assert supervise(backend, probe, "--ignore-term", wait_timeout=0.3) == EXIT_WAIT_TIMEOUT
    assert probe.starts(), "the child never ran"
    assert not probe.records("ignored-term")  # no SIGTERM was sent: SIGKILL at once
    assert not alive(probe.starts()[0].pid)
    assert "release" not in [c for c, _ in backend.calls]  # a lost lease is not ours
