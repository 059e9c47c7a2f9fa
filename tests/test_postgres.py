"""PostgreSQL end to end: the real CLI, the flock probe, a real server of our own."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.backends.postgres import key_parts, lock_key
from coordinator.errors import BackendUnavailable
from tests.cluster import Cluster, alive, run_cli, spawn_cli, wait_until
from tests.servers import PostgresServer
from tests.store import Store

SECRET = "s3cr3t-pa55"


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    if os.environ.get("COORDINATOR_TEST_POSTGRES_URL"):
        pytest.skip("needs a PostgreSQL server of its own to restart")
    srv = PostgresServer()
    time.sleep(max(0.0, 11.0 - srv.uptime()))  # older than the ttl used below
    yield srv
    srv.close()


def make_cluster(tmp: Path, server: PostgresServer, name: str = "probe") -> Cluster:
    return Cluster(tmp, ["--backend", "postgres", "--url", server.url], name=name)


@pytest.fixture
def cluster(server: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, server)
    yield c
    c.stop_all()
    for record in c.starts():
        assert not alive(record.pid)


def holder_backend_pid(server: PostgresServer, name: str) -> int:
    rows = server.sql(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND classid::int8 = {hi} AND objid::int8 = {lo}".format(
            **key_parts(lock_key(f"coordinator/{name}"))
        )
    )
    assert len(rows) == 1, rows
    return int(rows[0][0])  # type: ignore[call-overload]


def test_crash_failover_is_fast_whatever_the_ttl(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.start(ttl=10.0, grace=3.0)
    cluster.wait_starts(1, timeout=15)
    holder = cluster.holder()
    holder.kill()
    killed_at = time.monotonic()
    cluster.wait_starts(2, timeout=10)
    took = cluster.starts()[1].at - killed_at
    # The server drops the dead holder's session at once; a standby blocked in
    # pg_advisory_lock gets the lock without polling.
    assert took < 2.0, took
    cluster.check()


def test_graceful_handoff_is_immediate(cluster: Cluster) -> None:
    for _ in range(2):
        cluster.start(ttl=10.0, grace=3.0)
    cluster.wait_starts(1, timeout=15)
    holder = cluster.holder()
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(timeout=5) == 0
    stopped = cluster.records("stop")[0].at
    cluster.wait_starts(2, timeout=5)
    assert cluster.starts()[1].at - stopped < 0.5
    cluster.check()


def test_terminated_backend_stops_the_old_child_without_overlap(
    cluster: Cluster, server: PostgresServer
) -> None:
    for _ in range(2):
        cluster.start(ttl=10.0, grace=3.0, probe_flags=("--slow-stop=0.5",))
    cluster.wait_starts(1, timeout=15)
    pid = holder_backend_pid(server, cluster.name)
    child = cluster.starts()[0].pid
    server.sql(f"SELECT pg_terminate_backend({pid})")
    # The holder watches its connection: it notices at once, not at its next poll,
    # and kills its child without grace (the lock is free for the others already).
    assert wait_until(lambda: not alive(child), timeout=5) < 1.0
    assert not cluster.records("stop")
    cluster.wait_starts(2, timeout=25)
    cluster.check()


def test_immediate_restart_gives_no_overlap_and_recovers(
    cluster: Cluster, server: PostgresServer
) -> None:
    for _ in range(3):
        cluster.start(ttl=3.0, grace=1.0, probe_flags=("--slow-stop=0.5",))
    cluster.wait_starts(1, timeout=15)
    child = cluster.starts()[0].pid
    time.sleep(0.5)
    server.restart(immediate=True)
    wait_until(lambda: not alive(child), timeout=5)
    cluster.wait_starts(2, timeout=20)
    time.sleep(1.0)
    assert len(cluster.starts()) == 2
    cluster.check()


def test_different_names_never_block_each_other(server: PostgresServer, tmp_path: Path) -> None:
    a = make_cluster(tmp_path / "a", server, name="alpha")
    b = make_cluster(tmp_path / "b", server, name="beta")
    for c in (a, b):
        c.tmp.mkdir()
        c.start()
    try:
        a.wait_starts(1, timeout=15)
        b.wait_starts(1, timeout=15)
    finally:
        a.stop_all()
        b.stop_all()


def test_logs_show_the_lock_key_for_pg_locks(server: PostgresServer, tmp_path: Path) -> None:
    result = run_cli("-b", "postgres", "--url", server.url, "--name", "keyed", "--", "true")
    assert result.returncode == 0, result.stderr
    assert f"advisory lock {lock_key('coordinator/keyed')}" in result.stderr
    assert server.PASSWORD not in result.stderr


@pytest.mark.parametrize("how", ["DATABASE_URL", "PG*"])
def test_address_from_the_environment(server: PostgresServer, how: str) -> None:
    if how == "DATABASE_URL":
        env = {"DATABASE_URL": server.url}
    else:
        env = {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(server.port),
            "PGUSER": server.USER,
            "PGPASSWORD": server.PASSWORD,
            "PGDATABASE": server.DATABASE,
        }
    result = run_cli("-b", "postgres", "--", "true", env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://app:{secret}@127.0.0.1:{port}/app", "password authentication failed"),
        ("postgresql://app:{password}@127.0.0.1:{port}/nodb", "does not exist"),
        ("postgresql://nobody:{secret}@127.0.0.1:{port}/app", "password authentication failed"),
    ],
)
def test_refused_credentials_are_one_line_and_exit_3(
    server: PostgresServer, url: str, needle: str
) -> None:
    url = url.format(secret=SECRET, password=server.PASSWORD, port=server.port)
    result = run_cli("-b", "postgres", "--url", url, "--", "true")
    out = result.stdout + result.stderr
    assert result.returncode == 3, out
    errors = [line for line in out.splitlines() if line.startswith("coordinator: error:")]
    assert len(errors) == 1 and needle in errors[0], out
    assert SECRET not in out and server.PASSWORD not in out and "Traceback" not in out


def test_server_down_at_start_keeps_standbys_waiting(tmp_path: Path) -> None:
    srv = PostgresServer()
    srv.stop()
    url = srv.url
    proc = spawn_cli(
        "-b",
        "postgres",
        "--url",
        url,
        "--ttl",
        "3",
        "--grace",
        "1",
        "--safety-delay",
        "0",
        "--",
        sys.executable,
        "-c",
        "print('ran')",
    )
    try:
        time.sleep(2.0)
        assert proc.poll() is None
        srv.start()
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "cannot reach the backend, will keep trying" in out
        assert "ran" in out
        assert srv.PASSWORD not in out
        assert re.search(r"postgresql://app:\*\*\*@127\.0\.0\.1", out)
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.close()


def test_malformed_url_is_a_usage_error() -> None:
    result = run_cli(
        "-b", "postgres", "--url", f"host=x password={SECRET} port=notanumber =", "--", "true"
    )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert SECRET not in out and "Traceback" not in out


def acquire_ready(server: PostgresServer) -> tuple[Backend, Lease]:
    """A lease as a supervisor would start a child on it: acquired, and ready."""
    deadline = time.monotonic() + 20
    while True:
        backend = Store("postgres", server.url, "t/").backend("fence")
        try:
            lease = backend.acquire("fence", HolderInfo(node_id="n"))
            assert lease is not None
            while not lease.ready:
                time.sleep(0.05)
                lease = backend.renew(lease)
            return backend, lease
        except BackendUnavailable:  # still recovering from the crash
            backend.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


EMIT_MESSAGE = [
    "pg_logical_emit_message(boolean, text, text)",
    "pg_logical_emit_message(boolean, text, bytea)",
]


@pytest.mark.parametrize("emit", [True, False], ids=["logical-message", "wait-for-flush"])
def test_a_crash_never_hands_out_a_fencing_token_twice(server: PostgresServer, emit: bool) -> None:
    """Transaction ids whose commit had not reached the disk are reused after a crash;
    the token's commit must be durable before a child may use it. Where
    pg_logical_emit_message is not executable, the holder waits for the WAL flush."""
    revoke = ";".join(f"REVOKE EXECUTE ON FUNCTION {f} FROM PUBLIC" for f in EMIT_MESSAGE)
    if not emit:
        server.sql(revoke, database=server.DATABASE)
    try:
        tokens = []
        for _ in range(4):
            backend, lease = acquire_ready(server)
            tokens.append(lease.fencing_token)
            server.restart(immediate=True)  # at once: the commit may not be on disk yet
            backend.close()
        backend, lease = acquire_ready(server)
        tokens.append(lease.fencing_token)
        assert backend._emit is emit  # type: ignore[attr-defined]  # the path taken
        backend.release(lease)
        backend.close()
    finally:
        if not emit:
            grant = revoke.replace("REVOKE", "GRANT").replace("FROM", "TO")
            server.sql(grant, database=server.DATABASE)
    assert tokens == sorted(set(tokens)), tokens  # strictly increasing


def terminate_all_sessions_of(server: PostgresServer, supervisor_pid: int) -> int:
    """pg_terminate_backend on every session of one supervisor (its node id is
    hostname:pid), as an operator, a pooler restart or a network reset would end them."""
    rows = server.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE application_name LIKE 'coordinator %:{supervisor_pid}'"
    )
    return int(rows[0][0])  # type: ignore[call-overload]


def test_every_session_of_the_holder_ended_at_once_gives_no_overlap(
    cluster: Cluster, server: PostgresServer
) -> None:
    """The lock session and the beacon session end together while the holder lives:
    the standby gets both at once, and must not start before the old child is gone."""
    for _ in range(3):
        cluster.start(ttl=3.0, grace=1.0, probe_flags=("--slow-stop=0.7",))
    for round_ in range(3):
        cluster.wait_starts(round_ + 1, timeout=15)
        time.sleep(0.3)
        holder = cluster.holder()
        assert terminate_all_sessions_of(server, holder.pid) == 2
        cluster.wait_starts(round_ + 2, timeout=20)
        cluster.check()
    # The holder stopped its child at once (no grace: the lock was already free).
    stops = cluster.records("stop")
    assert not stops, f"the old child was given a graceful stop: {stops}"


def test_a_sql_ascii_database_works(server: PostgresServer) -> None:
    """Text comes back as bytes from a SQL_ASCII database (psycopg cannot decode it)."""
    server.sql(
        "CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'"
        f" TEMPLATE template0 OWNER {server.USER}"
    )
    url = server.url.rsplit("/", 1)[0] + "/ascii_db"
    first, second = (Store("postgres", url, "t/").backend("x") for _ in range(2))
    try:
        lease = first.acquire("x", HolderInfo(node_id="first"))
        assert lease is not None
        assert second.acquire("x", HolderInfo(node_id="second")) is None
        holder = second.holder("x")
        assert holder is not None and holder.node_id == "first", holder
        first.release(lease)
        assert wait_until(lambda: second.acquire("x", HolderInfo(node_id="second")), 5) >= 0
    finally:
        first.close()
        second.close()


def test_sessions_ended_while_the_child_is_stopping_give_no_overlap(
    cluster: Cluster, server: PostgresServer
) -> None:
    """A graceful stop is under way (SIGTERM, a child that takes 2.5 s) when every
    session of the holder ends: the standby holds off only 0.5 s, so the rest of the
    grace must not be given."""
    for _ in range(2):
        cluster.start(ttl=10.0, grace=3.0, probe_flags=("--slow-stop=2.5",))
    cluster.wait_starts(1, timeout=15)
    holder = cluster.holder()
    holder.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # the child is in its slow stop now
    assert terminate_all_sessions_of(server, holder.pid) == 2
    cluster.wait_starts(2, timeout=15)
    cluster.check()
