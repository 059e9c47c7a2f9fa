"""The real CLI as subprocesses, with the flock probe as the child, on every backend."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, alive, cli_env, wait_until
from tests.conftest import Store


@pytest.fixture
def cluster(store: Store, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, store.cli_args(), ttl=store.ttl)
    yield c
    c.stop_all()
    for record in c.starts():
        assert not alive(record.pid), f"child {record.pid} outlived its supervisor"


def test_three_supervisors_run_exactly_one_child(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.start()
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    time.sleep(cluster.ttl)  # several renewals: nobody else starts
    assert len(cluster.starts()) == 1
    assert sum(p.poll() is None for p in cluster.procs) == 3
    cluster.check()
    # The standbys name the holder (default node id: hostname:pid) and its token.
    holder, token = cluster.holder(), cluster.starts()[0].token
    cluster.stop_all()
    for standby in (p for p in cluster.procs if p is not holder):
        named = f"is held by {socket.gethostname()}:{holder.pid} (fencing token {token})"
        assert named in cluster.output(standby)


def test_kill_9_of_the_holder_fails_over_within_ttl(cluster: Cluster, store: Store) -> None:
    for _ in range(3):
        cluster.start()
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    old_child = cluster.starts()[0]
    holder = cluster.holder()
    holder.kill()
    killed_at = time.monotonic()
    holder.wait()
    # The parent-death signal takes the child down with its supervisor.
    wait_until(lambda: not alive(old_child.pid), timeout=2)
    # Consul invalidates a session up to twice its TTL late, then applies the lock-delay
    # (here the ttl): about 3 x ttl.
    bound = 3 * store.ttl + 5 if store.kind == "consul" else store.ttl + 1
    cluster.wait_starts(2, timeout=bound)
    took = cluster.starts()[1].at - killed_at
    print(f"{store.kind}: failover after kill -9 took {took:.2f}s (ttl {store.ttl:g}s)")
    assert took < bound, took
    cluster.check()


def test_sigterm_of_the_holder_hands_over_at_once(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.start()
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    holder = cluster.holder()
    holder.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert holder.wait(timeout=5) == 0  # the probe exits 0 on SIGTERM
    cluster.wait_starts(2, timeout=5)
    took = cluster.starts()[1].at - signalled
    print(f"handoff after SIGTERM took {took:.3f}s")
    assert took < 1.0, took
    stops = cluster.records("stop")
    assert stops and stops[0].at <= cluster.starts()[1].at
    cluster.check()


def test_lock_deleted_out_of_band_stops_the_old_child(cluster: Cluster, store: Store) -> None:
    for _ in range(2):
        cluster.start(probe_flags=("--slow-stop=0.5",))
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    old = cluster.starts()[0]
    store.delete_lock(cluster.name)
    # The holder learns at its next renewal (ttl/3), or at once from its connection,
    # and stops its child (postgres: SIGKILL at once, so no "stop" record); the
    # newcomer waits the safety delay, so the two never overlap.
    wait_until(lambda: not alive(old.pid), timeout=cluster.ttl)
    cluster.wait_starts(2, timeout=2 * cluster.ttl + 2)
    cluster.check()


def test_child_exit_code_propagates(cluster: Cluster) -> None:
    proc = cluster.start(child=[sys.executable, "-c", "import sys; sys.exit(7)"])
    assert proc.wait(timeout=cluster.ttl + 10) == 7
    proc = cluster.start(child=[sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    assert proc.wait(timeout=cluster.ttl + 10) == 128 + 9


def test_child_ignoring_sigterm_is_killed_after_grace(cluster: Cluster) -> None:
    proc = cluster.start(probe_flags=("--ignore-term",))
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    child = cluster.starts()[0]
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert proc.wait(timeout=5) == 128 + signal.SIGKILL
    took = time.monotonic() - start
    grace = cluster.ttl / 3
    assert grace - 0.1 <= took < grace + 1.5, took
    assert cluster.records("ignored-term")
    assert not alive(child.pid)


def test_grandchildren_are_stopped_with_the_child(cluster: Cluster) -> None:
    proc = cluster.start(probe_flags=("--grandchild",))
    wait_until(lambda: cluster.records("grandchild"), timeout=cluster.ttl + 10)
    grandchild = cluster.records("grandchild")[0]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)
    wait_until(lambda: not alive(grandchild.pid), timeout=2)


def test_grandchildren_die_with_a_killed_supervisor(cluster: Cluster) -> None:
    # The parent-death signal reaches the child only; the watchdog kills its group.
    proc = cluster.start(probe_flags=("--grandchild",))
    wait_until(lambda: cluster.records("grandchild"), timeout=cluster.ttl + 10)
    child, grandchild = cluster.starts()[0], cluster.records("grandchild")[0]
    proc.kill()
    proc.wait()
    wait_until(lambda: not alive(child.pid) and not alive(grandchild.pid), timeout=2)


def test_paused_supervisor_loses_its_child_before_the_lease_expires(cluster: Cluster) -> None:
    holder = cluster.start(probe_flags=("--grandchild",))
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    cluster.start()
    child = cluster.starts()[0]
    holder.send_signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    try:
        # The last renewal was at most ttl/3 before the pause; the watchdog kills the
        # child at that renewal's deadline minus the margin.
        wait_until(lambda: not alive(child.pid), timeout=cluster.ttl + 2)
        assert time.monotonic() - paused_at < cluster.ttl, "killed after the lease expired"
        assert all(not alive(r.pid) for r in cluster.records("grandchild"))
    finally:
        holder.send_signal(signal.SIGCONT)
    time.sleep(1.0)
    assert holder.poll() is None, "the resumed supervisor should contend again, not exit"
    cluster.check()


def test_second_sigterm_kills_at_once(cluster: Cluster) -> None:
    proc = cluster.start(probe_flags=("--ignore-term",))
    cluster.wait_starts(1, timeout=cluster.ttl + 10)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    assert proc.wait(timeout=5) == 128 + signal.SIGKILL
    assert time.monotonic() - start < 0.8


def test_forwarded_signal_reaches_the_child(cluster: Cluster, tmp_path: Path) -> None:
    marker = tmp_path / "got-hup"
    script = (
        "import signal, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(marker)!r}).touch())\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    proc = cluster.start(child=[sys.executable, "-c", script])
    assert proc.stdout is not None
    wait_until(
        lambda: "ready" in (proc.stdout.readline() if proc.stdout else ""), timeout=cluster.ttl + 10
    )
    proc.send_signal(signal.SIGHUP)
    wait_until(marker.exists, timeout=3)
    assert proc.poll() is None  # HUP is forwarded, it does not stop the supervisor


def test_child_environment(cluster: Cluster, store: Store, tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = (
        "import os, json\n"
        f"open({str(out)!r}, 'a').write(json.dumps({{k: v for k, v in os.environ.items()"
        " if k.startswith('COORDINATOR_') or 'REDIS' in k}) + '\\n')\n"
    )
    env_before = {k for k in os.environ if "REDIS" in k}
    for _ in range(2):
        proc = cluster.start("--node-id", "n1", child=[sys.executable, "-c", script])
        assert proc.wait(timeout=cluster.ttl + 10) == 0
    import json

    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["COORDINATOR_NAME"] for r in runs] == ["probe", "probe"]
    assert [r["COORDINATOR_NODE_ID"] for r in runs] == ["n1", "n1"]
    tokens = [int(r["COORDINATOR_FENCING_TOKEN"]) for r in runs]
    assert tokens[0] < tokens[1]
    # Where the lease lives, as the supervisor uses it (--url here), and nothing else.
    assert {k for k in runs[0] if "REDIS" in k} == env_before
    assert runs[0]["COORDINATOR_BACKEND"] == store.kind
    assert runs[0]["COORDINATOR_URL"] == store.url
    assert runs[0]["COORDINATOR_KEY_PREFIX"] == store.prefix


def test_child_environment_without_url(tmp_path: Path) -> None:
    """No --url: COORDINATOR_URL stays absent, so the child applies the backend's own
    defaults (REDIS_URL, ...) exactly as the supervisor did."""
    script = (
        "import os; print(os.environ.get('COORDINATOR_URL'), os.environ['COORDINATOR_BACKEND'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_URL"}
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "--name", "env", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(env),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "file"]


def test_python_dash_m_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("coordinator ")
