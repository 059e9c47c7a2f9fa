"""`coordinator status` on every backend, against real servers."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from coordinator.backends.base import Backend, HolderInfo
from tests.cluster import run_cli, spawn_cli, stop_cli, wait_until
from tests.conftest import Store
from tests.servers import RedisServer, free_port
from tests.test_bad_input import SECRET, assert_one_clear_line

Make = Callable[..., Backend]
HELD, FREE, REJECTED, UNAVAILABLE = 0, 1, 3, 69


def status(store: Store, *args: str) -> tuple[int, str, str]:
    result = run_cli("status", *store.cli_args(), *args, timeout=30)
    return result.returncode, result.stdout, result.stderr


def status_json(store: Store, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = status(store, "--json", *args)
    assert err == "", err
    [line] = out.splitlines()  # one JSON object, on one line
    report: dict[str, Any] = json.loads(line)
    return code, report


def test_free_held_free_with_what_each_backend_reports(make_backend: Make, store: Store) -> None:
    code, out, _ = status(store, "--name", "x")
    assert code == FREE, out
    assert out.startswith("x: free (")

    backend = make_backend()
    before = time.time()
    lease = backend.acquire("x", HolderInfo(node_id="node-a"))
    after = time.time()
    assert lease is not None

    code, out, _ = status(store, "--name", "x")
    assert code == HELD, out
    assert out.splitlines()[0] == "x: held by node-a"
    assert f"fencing token: {lease.fencing_token}" in out

    code, report = status_json(store, "--name", "x")
    assert code == HELD
    assert report["held"] is True
    assert report["name"] == "x" and report["backend"] == store.kind
    assert report["node_id"] == "node-a"
    assert report["fencing_token"] == lease.fencing_token
    assert datetime.fromisoformat(report["since"]).timestamp() == pytest.approx(
        report["since_epoch"], abs=0.001
    )
    if store.kind == "postgres":
        # The server reports its own view: the lock session's backend pid and client
        # address, and since when that session is connected.
        assert report["pid"] != os.getpid() and report["pid"] > 0
        assert report["host"]
        assert report["since_epoch"] <= after + 1
    else:
        assert report["pid"] == os.getpid()
        assert report["host"] == socket.gethostname()
        assert before - 1 <= report["since_epoch"] <= after + 1
    if store.kind == "redis":
        assert 0 < report["ttl_left"] <= store.ttl
        assert "ttl left:" in out
    else:
        assert report["ttl_left"] is None  # a flock, a session lock or a session TTL

    backend.release(lease)
    code, report = status_json(store, "--name", "x")
    assert code == FREE
    assert report["held"] is False and report["node_id"] is None
    assert report["fencing_token"] is None


def test_status_of_a_running_supervisor_by_its_command(store: Store, tmp_path: Path) -> None:
    # No --name: both sides derive it from the command line.
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    proc = spawn_cli(*store.cli_args(), "--node-id", "n1", "--safety-delay", "0", "--", *command)
    try:
        wait_until(lambda: status(store, "--", *command)[0] == HELD, timeout=store.ttl + 10)
        code, report = status_json(store, "--", *command)
        assert code == HELD
        assert report["node_id"] == "n1"
        assert report["name"].startswith("python")
        if store.kind != "postgres":
            assert report["pid"] == proc.pid
    finally:
        stop_cli(proc)
    code, report = status_json(store, "--", *command)
    assert code == FREE, report


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("redis", "redis://:{secret}@127.0.0.1:{port}/0"),
        ("postgres", "postgresql://app:{secret}@127.0.0.1:{port}/app"),
        ("consul", "http://:{secret}@127.0.0.1:{port}"),
        # libpq and redis-py also take the password as a query parameter.
        ("postgres", "postgresql://app@127.0.0.1:{port}/app?password={secret}&sslmode=disable"),
        ("redis", "redis://127.0.0.1:{port}/0?password={secret}"),
    ],
)
def test_unreachable_backend_exits_69(kind: str, url: str) -> None:
    url = url.format(secret=SECRET, port=free_port())
    result = run_cli("status", "-b", kind, "--url", url, "--name", "x", "--json", timeout=30)
    assert result.returncode == UNAVAILABLE, result.stderr
    assert_one_clear_line(result.stderr, "cannot tell who holds")
    report = json.loads(result.stdout)
    assert report["held"] is None and report["error"]
    assert SECRET not in result.stdout + result.stderr
    assert "***" in result.stdout and "***" in result.stderr


def test_unreadable_lock_file_exits_69(tmp_path: Path) -> None:
    # A symlink loop cannot be opened, even by root.
    (tmp_path / "x.lock").symlink_to("x.lock")
    result = run_cli("status", "--url", str(tmp_path), "--name", "x", timeout=30)
    assert result.returncode == UNAVAILABLE, result.stderr
    assert_one_clear_line(result.stderr, "cannot open lock file")


def test_a_server_that_never_answers_is_given_up_on(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete in the backlog; nothing ever answers
        port = silent.getsockname()[1]
        start = time.monotonic()
        result = run_cli(
            "status", "-b", "redis", "--url", f"redis://127.0.0.1:{port}/0", "--name", "x",
            "--timeout", "0.5",
        )  # fmt: skip
        took = time.monotonic() - start
    assert result.returncode == UNAVAILABLE, result.stderr
    assert_one_clear_line(result.stderr, "no answer within 0.5s")
    assert took < 5, took  # the client's own timeout (1.7 s) is not waited for


def test_wrong_password_exits_3(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right-one")
    try:
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        result = run_cli("status", "-b", "redis", "--url", url, "--name", "x")
        assert result.returncode == REJECTED, result.stderr
        assert_one_clear_line(result.stderr, "refused")
    finally:
        server.stop()


def test_a_command_called_status_still_runs(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "status"
    program.write_text('#!/bin/sh\necho ran the program called status "$@"\n')
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run_cli("--url", str(tmp_path / "locks"), "--", "status", "-x", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran the program called status -x\n"
    # Without '--' the first word picks the status command.
    result = run_cli("status", "--url", str(tmp_path / "locks"), "-x", env=env)
    assert result.returncode == 2
    assert_one_clear_line(result.stderr, "No such option: -x", "coordinator status --help")


def test_status_help_lists_the_exit_codes() -> None:
    result = run_cli("status", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "0 held; 1 free" in text and "69" in text and "coordinator -- status" in text
    result = run_cli("--help")
    assert "coordinator status --help" in " ".join(result.stdout.split())
