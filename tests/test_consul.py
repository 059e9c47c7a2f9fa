"""Consul end to end with an agent of the test's own: restarts, ACLs, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, alive, spawn_cli, stop_cli, wait_until
from tests.servers import ConsulServer, free_port

TTL = 10.0
SECRET = "5ecret-acl-token"


def coordinator(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return spawn_cli("-b", "consul", *args, env=env)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ConsulServer]:
    if os.environ.get("COORDINATOR_TEST_CONSUL_URL"):
        pytest.skip("needs a consul agent of its own to restart")
    server = ConsulServer(tmp_path)
    yield server
    server.stop()


def test_agent_restart_gives_no_overlap_and_recovers(agent: ConsulServer, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ["--backend", "consul", "--url", agent.url], ttl=TTL)
    try:
        for _ in range(3):
            cluster.start(probe_flags=("--slow-stop=0.5",))
        cluster.wait_starts(1, timeout=TTL + 10)
        agent.restart()  # a dev agent forgets every session and key
        wait_until(lambda: cluster.records("stop"), timeout=TTL)
        cluster.wait_starts(2, timeout=3 * TTL)
        time.sleep(1.0)
        assert len(cluster.starts()) == 2
        cluster.check()
    finally:
        cluster.stop_all()
    for record in cluster.starts():
        assert not alive(record.pid)


def test_ttl_below_consul_minimum_is_rejected() -> None:
    proc = coordinator("--ttl", "5", "--grace", "1", "--", "true")
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 2
    assert "below Consul's minimum session TTL of 10s" in out and "Traceback" not in out


def test_missing_or_wrong_acl_token_keeps_standbys_waiting(tmp_path: Path) -> None:
    server = ConsulServer(tmp_path, acl_token="root-token-1")
    try:
        for env in ({}, {"CONSUL_HTTP_TOKEN": SECRET}):
            proc = coordinator("--url", server.url, "--ttl", "10", "--", "true", env=env)
            time.sleep(2.5)
            assert proc.poll() is None, "a standby must keep waiting"
            out = stop_cli(proc)
            assert "refused the ACL token" in out, out
            assert SECRET not in out and "Traceback" not in out
        # With the right token it runs.
        proc = coordinator(
            "--url",
            server.url,
            "--ttl",
            "10",
            "--safety-delay",
            "0",
            "--",
            "true",
            env={"CONSUL_HTTP_TOKEN": "root-token-1"},
        )
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        server.stop()


def test_token_in_the_address_is_never_shown(tmp_path: Path) -> None:
    url = f"http://:{SECRET}@127.0.0.1:{free_port()}"
    proc = coordinator("--url", url, "--ttl", "10", "--", "true")
    time.sleep(2.0)
    assert proc.poll() is None
    out = stop_cli(proc)
    assert "cannot reach the backend, will keep trying" in out
    assert SECRET not in out and "Traceback" not in out


def test_down_at_start_then_up(tmp_path: Path) -> None:
    port = free_port()
    proc = coordinator(
        "--url",
        f"127.0.0.1:{port}",
        "--ttl",
        "10",
        "--safety-delay",
        "0",
        "--",
        sys.executable,
        "-c",
        "print('ran')",
    )
    try:
        time.sleep(1.5)
        assert proc.poll() is None
        server = ConsulServer(tmp_path, port=port)
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, out
        assert "ran" in out
        server.stop()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_address_from_consul_http_addr(agent: ConsulServer) -> None:
    proc = coordinator(
        "--ttl",
        "10",
        "--safety-delay",
        "0",
        "--",
        "true",
        env={"CONSUL_HTTP_ADDR": agent.url.removeprefix("http://")},
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert agent.url in out


def test_tls_error_is_one_line_and_keeps_waiting(agent: ConsulServer) -> None:
    proc = coordinator(
        "--url", agent.url.replace("http://", "https://"), "--ttl", "10", "--", "true"
    )
    time.sleep(2.0)
    assert proc.poll() is None
    out = stop_cli(proc)
    assert "TLS error" in out or "SSL" in out, out
    assert "Traceback" not in out
