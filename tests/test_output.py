"""What the program prints: log lines in the chosen format (the watchdog's too), one
line per record whatever a name holds, standbys that follow the holder, a child stopped
by the terminal, and an HTTP server that shrugs off clients that hang up."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from coordinator import watchdog
from tests.cluster import run_cli, spawn_cli, stop_cli, wait_until
from tests.conftest import Store
from tests.servers import free_port
from tests.test_observability import sample

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d coordinator\[\d+\] "
    r"(DEBUG|INFO|WARNING|ERROR) \S"
)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


_unread: dict[int, str] = {}  # what was read past the needle, per process


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> str:
    """Output of a spawned CLI up to the end of the first line holding `needle`; fails
    after `timeout` seconds without it (no blocking read)."""
    assert proc.stdout is not None
    fd, end = proc.stdout.fileno(), time.monotonic() + timeout
    text = _unread.pop(proc.pid, "")
    while True:
        if (at := text.find(needle)) >= 0:
            cut = text.find("\n", at)
            cut = len(text) if cut < 0 else cut + 1
            _unread[proc.pid] = text[cut:]
            return text[:cut]
        left = end - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"{needle!r} not in {text!r}")
        chunk = os.read(fd, 65536).decode(errors="replace")
        if not chunk:
            raise AssertionError(f"{needle!r} not in {text!r} (output ended)")
        text += chunk


# -- text lines ------------------------------------------------------------------------


def test_text_lines_have_milliseconds_offset_and_never_split(tmp_path: Path) -> None:
    """Names are refused with control characters; a directory may have them."""
    name = "odd\nname\r\x1b[31m\u2028end"
    proc = spawn_cli(
        *("--url", str(tmp_path / name), "--name", "plain", "--ttl", "3", "--grace", "1"),
        *("--safety-delay", "0", "--", sys.executable, "-c", "pass"),
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = out.split("\n")[:-1]
    assert len(lines) >= 5, out
    for line in lines:
        assert TEXT_LINE.match(line), (line, out)
    assert "odd\\nname\\r\\x1b[31m\\u2028end" in lines[0], lines[0]


def test_the_error_line_follows_the_log_format() -> None:
    args = ("--ttl", "3", "--grace", "3", "--", "true")
    result = run_cli("--log-format", "json", *args)
    [line] = result.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["exit_code"] == result.returncode == 2
    assert record["message"].startswith("error: --grace 3s is too long")
    result = run_cli(*args, env={"COORDINATOR_LOG_FORMAT": "json"})
    assert json.loads(result.stderr)["event"] == "error"
    assert run_cli(*args).stderr.startswith("coordinator: error: --grace 3s")


# -- the watchdog ------------------------------------------------------------------------


def watchdog_line(log_format: str) -> str:
    """What the watchdog writes when it kills a group whose moment passed."""
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    watchdog.configure(log_format, "n\x01", "id-1")
    arguments = watchdog._arguments()
    watchdog.configure("text", "", "")
    dog = subprocess.Popen(
        [sys.executable, "-I", "-S", watchdog.__file__, *arguments],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dog.stdin is not None and dog.stderr is not None
        dog.stdin.write(f"run {victim.pid} {time.monotonic() + 0.2:.6f}\n")
        dog.stdin.flush()
        assert victim.wait(timeout=10) == -signal.SIGKILL
        dog.stdin.close()
        return dog.stderr.read()
    finally:
        victim.kill()
        dog.kill()
        dog.wait()


def test_watchdog_lines_follow_the_log_format() -> None:
    text = watchdog_line("text").splitlines()
    assert len(text) == 1 and TEXT_LINE.match(text[0]), text
    assert "WARNING watchdog: supervisor" in text[0]
    [line] = watchdog_line("json").splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["event"] == "watchdog_kill"
    assert record["name"] == "n\x01" and record["node_id"] == "id-1"
    assert record["message"].startswith("watchdog: supervisor")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["ts"])


def test_a_supervisor_passes_its_log_format_to_its_watchdog(tmp_path: Path) -> None:
    """SIGKILL the supervisor: its watchdog kills the child and says so in JSON."""
    proc = spawn_cli(
        *("--url", str(tmp_path / "locks"), "--name", "w", "--ttl", "3", "--grace", "1"),
        *("--log-format", "json", "--", *SLEEPER),
    )
    try:
        read_until(proc, '"event": "running"')
    finally:
        proc.kill()  # SIGKILL: the watchdog is left to kill the child
    out, _ = proc.communicate(timeout=20)
    records = [json.loads(line) for line in out.splitlines()]
    assert any(r.get("event") == "watchdog_kill" and r["name"] == "w" for r in records), out


# -- standbys follow the holder ------------------------------------------------------


def test_a_standby_logs_each_change_of_holder(store: Store) -> None:
    def node(node_id: str) -> subprocess.Popen[str]:
        return spawn_cli(
            *store.cli_args(),
            *("--name", "h", "--ttl", str(store.ttl), "--grace", str(store.ttl / 3)),
            *("--safety-delay", "0", "--node-id", node_id, "--", *SLEEPER),
        )

    first = node("first")
    read_until(first, "started the child")
    b, c = node("b"), node("c")
    try:
        read_until(b, "standing by")
        read_until(c, "standing by")
        stop_cli(first)
        # One of b and c takes over; the other must say that the holder changed.
        observer = store.backend("h")
        try:
            wait_until(lambda: (h := observer.holder("h")) and h.node_id in ("b", "c"), 40)
            holder = observer.holder("h")
        finally:
            observer.close()
        assert holder is not None
        loser = c if holder.node_id == "b" else b
        changed = read_until(loser, "the holder of").splitlines()[-1]
        assert f"changed: now {holder.node_id} (fencing token {holder.fencing_token})" in changed
    finally:
        for proc in (first, b, c):
            if proc.poll() is None:
                stop_cli(proc)


# -- a child stopped by the terminal ------------------------------------------------


def test_a_child_that_reads_the_terminal_is_reported(tmp_path: Path) -> None:
    """The supervisor on a terminal (a pty) and a child that reads it: the child, in a
    background process group, stops on SIGTTIN; the log says so, and SIGTERM still
    stops it within its grace."""
    pid, fd = pty.fork()
    if pid == 0:  # the supervisor, with the pty as its controlling terminal
        os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        os.execv(
            sys.executable,
            [
                sys.executable,
                *("-m", "coordinator", "--url", str(tmp_path / "locks"), "--name", "tty"),
                *("--ttl", "6", "--grace", "2", "--", sys.executable, "-c", "input()"),
            ],
        )
    output = b""

    def seen(text: bytes) -> bool:
        nonlocal output
        if select.select([fd], [], [], 0.1)[0]:
            try:
                output += os.read(fd, 65536)
            except OSError as exc:  # EIO: the supervisor is gone
                raise AssertionError(output) from exc
        return text in output

    try:
        wait_until(lambda: seen(b"is stopped by SIGTTIN"), timeout=20)
        start = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: seen(b"released"), timeout=20)
        assert time.monotonic() - start < 1.5, output  # TERM reached it: no grace wait
        assert b"child stopped with code 143" in output, output
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def test_a_child_stopped_by_sigstop_is_reported(tmp_path: Path) -> None:
    proc = spawn_cli(
        *("--url", str(tmp_path / "locks"), "--name", "s", "--ttl", "3", "--grace", "1"),
        *("--", *SLEEPER),
    )
    try:
        started = read_until(proc, "started the child")
        child = int(re.findall(r"started the child, pid (\d+)", started)[0])
        os.kill(child, signal.SIGSTOP)
        read_until(proc, f"the child (pid {child}) is stopped by SIGSTOP")
    finally:
        stop_cli(proc)


# -- the HTTP endpoints ----------------------------------------------------------------


def test_metrics_server_shrugs_off_clients_that_reset(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn_cli(
        *("--url", str(tmp_path / "locks"), "--name", "m", "--ttl", "3", "--grace", "1"),
        *("--metrics-address", f"127.0.0.1:{port}", "--", *SLEEPER),
    )
    try:
        read_until(proc, "started the child")
        start = time.monotonic()
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200 and response.read() == b""
            assert int(response.headers["Content-Length"]) > 0
        spent = time.monotonic() - start
        errors = sample(port, "coordinator_http_client_errors_total")
        assert errors is not None
    finally:
        out = stop_cli(proc)
    assert "Traceback" not in out and "Exception" not in out, out
    # Measured: 20 resets took 2 s and the next probe 1 s before; a few ms now.
    assert spent < 1.0, spent


def test_status_text_keeps_one_field_per_line(redis_url: str) -> None:
    """A holder whose node id holds a newline cannot forge lines in `status`."""
    from coordinator.backends.base import HolderInfo
    from tests.store import Store

    store = Store("redis", redis_url, f"test-{os.getpid()}/")
    backend = store.backend("odd")
    lease = backend.acquire("odd", HolderInfo(node_id="n1\n  fencing token: 1\x1b[2J"))
    assert lease is not None
    try:
        result = run_cli("status", *store.cli_args(), "--name", "odd")
    finally:
        backend.release(lease)
        backend.close()
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.endswith("held by n1\\n  fencing token: 1\\x1b[2J"), result.stdout
    assert result.stdout.count("fencing token:") == 2  # the escaped one and the real one
