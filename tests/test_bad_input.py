"""Bad input: one clear line, a documented exit code, no traceback, no password."""

from __future__ import annotations

import logging
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import ROOT, cli_env, run_cli, spawn_cli, stop_cli, wait_until
from tests.servers import RedisServer, free_port

SECRET = "s3cr3t-pa55"


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = run_cli(*args, env=env, timeout=20)
    return result.returncode, result.stdout + result.stderr


def assert_one_clear_line(output: str, *needles: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("coordinator: error:")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], output
    assert "Traceback" not in output
    assert SECRET not in output


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--backend", "nope", "--", "true"], 2, "unknown backend 'nope'"),
        (["--nmae", "x", "--", "true"], 2, "No such option: --nmae"),
        (["--name", "x"], 2, "no command given"),
        (["--name", "x", "--"], 2, "no command given"),
        (["--ttl", "3", "--grace", "3", "--", "true"], 2, "--grace 3s is too long for --ttl 3s"),
        (["--ttl", "10", "--grace", "9", "--", "true"], 2, "is too long"),
        (["--ttl", "0", "--", "true"], 2, "--ttl must be from 0.5 to 1e+09 seconds, got 0"),
        (["--ttl", "abc", "--", "true"], 2, "--ttl"),
        (["--log-level", "loud", "--", "true"], 2, "unknown log level"),
        (["-b", "redis", "--url", f"redis://:{SECRET}@[::1", "--", "true"], 2, "malformed"),
        (["-b", "redis", "--url", f"http://u:{SECRET}@h/", "--", "true"], 2, "redis URL must"),
        (
            ["-b", "postgres", "--url", f"postgresql://u:{SECRET}@[::1", "--", "true"],
            2,
            "malformed",
        ),
        (["-b", "consul", "--url", f"http://u:{SECRET}@[::1", "--", "true"], 2, "malformed consul"),
        (["-b", "file", "--url", f"http://u:{SECRET}@h/", "--", "true"], 2, "file backend"),
        (["--log-format", "xml", "--", "true"], 2, "unknown log format 'xml'"),
        (["--metrics-address", "9100", "--", "true"], 2, "--metrics-address must be HOST:PORT"),
        (["--metrics-address", "h:99999", "--", "true"], 2, "--metrics-address must be"),
        (["--metrics-address", "::1:9100", "--", "true"], 2, "IPv6 host in brackets"),
        (["--status-file", "/nonexistent/s.json", "--", "true"], 2, "cannot write --status-file"),
        (["--status-file", "/", "--", "true"], 2, "is a directory"),
        (["status"], 2, "status needs --name"),
        (["status", "--name", "x", "--timeout", "0"], 2, "--timeout must be more than 0"),
        (["status", "--name", "x", "--jsn"], 2, "No such option: --jsn"),
        (["status", "-b", "nope", "--name", "x"], 2, "unknown backend 'nope'"),
        (["status", "-b", "redis", "--url", f"http://u:{SECRET}@h/", "-n", "x"], 2, "redis URL"),
        (["--", "/nonexistent/program"], 127, "command not found"),
        (["--", "/dev/null"], 126, "not executable"),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_code(
    args: list[str], code: int, needle: str, tmp_path: Path
) -> None:
    status, output = run(*args, env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert status == code, output
    assert_one_clear_line(output, needle)


def test_unreachable_server_at_start_keeps_the_standby_waiting() -> None:
    url = f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0"
    proc = spawn_cli("-b", "redis", "--url", url, "--", "true")
    time.sleep(2.0)
    assert proc.poll() is None, "a standby must not exit because the backend is down"
    out = stop_cli(proc)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "cannot reach the backend, will keep trying" in out
    assert "user:***@127.0.0.1" in out
    assert SECRET not in out and "Traceback" not in out


def test_standby_acquires_once_the_server_comes_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.stop()
    done = tmp_path / "ran"
    proc = spawn_cli(
        "-b",
        "redis",
        "--url",
        server.url,
        "--ttl",
        "3",
        "--grace",
        "1",
        "--safety-delay",
        "0",
        "--",
        sys.executable,
        "-c",
        f"open({str(done)!r}, 'w').write('x')",
    )
    try:
        time.sleep(1.5)
        assert not done.exists()
        server.start()
        assert proc.wait(timeout=15) == 0
        assert done.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_wrong_password_is_one_line_and_exit_3(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right-one")
    try:
        url = f"redis://:{SECRET}@127.0.0.1:{server.port}/0"
        status, output = run("-b", "redis", "--url", url, "--", "true")
        assert status == 3, output
        assert_one_clear_line(output, "refused")
        assert ":***@127.0.0.1" in output
        status, output = run(
            "-b", "redis", "--url", f"redis://127.0.0.1:{server.port}/0", "--", "true"
        )
        assert status == 3, output
        assert_one_clear_line(output, "refused")
    finally:
        server.stop()


def test_acl_user_and_password_in_the_url_work(tmp_path: Path) -> None:
    import redis

    server = RedisServer(tmp_path)
    try:
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "beat", "on", f">{SECRET}", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        url = f"redis://beat:{SECRET}@127.0.0.1:{server.port}/0"
        status, output = run("-b", "redis", "--url", url, "--", "true")
        assert status == 0, output
        assert SECRET not in output
        status, output = run("-b", "redis", "--url", url.replace(SECRET, "wrong"), "--", "true")
        assert status == 3, output
    finally:
        server.stop()


def test_missing_client_library_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "redis.py"
    blocker.write_text("raise ImportError('blocked for this test', name='redis')\n")
    status, output = run("-b", "redis", "--", "true", env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert status == 2, output
    assert_one_clear_line(output, "pip install 'coordinator[redis]'")


def test_metrics_without_prometheus_client_names_the_extra(tmp_path: Path) -> None:
    blocker = tmp_path / "prometheus_client.py"
    blocker.write_text("raise ImportError('blocked for this test', name='prometheus_client')\n")
    status, output = run(
        *("--url", str(tmp_path), "--metrics-address", f"127.0.0.1:{free_port()}"),
        *("--", "true"),
        env={"PYTHONPATH": f"{tmp_path}:{ROOT}"},
    )
    assert status == 2, output
    assert_one_clear_line(output, "pip install 'coordinator[metrics]'")


def test_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, output = run(
            "--url", str(tmp_path), "--metrics-address", f"127.0.0.1:{port}", "--", "true"
        )
    assert status == 2, output
    assert_one_clear_line(output, f"cannot serve metrics on 127.0.0.1:{port}", "in use")


def test_wait_timeout_exits_4(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    holder = spawn_cli("--name", "wt", "--", "sleep", "30", env=env)
    try:
        wait_until(lambda: (tmp_path / "coordinator" / "wt.lock").exists(), timeout=10)
        time.sleep(0.3)
        start = time.monotonic()
        status, output = run("--name", "wt", "--wait-timeout", "1", "--", "true", env=env)
        assert status == 4, output
        assert 0.9 < time.monotonic() - start < 5
        assert "--wait-timeout" in output
    finally:
        holder.terminate()
        holder.wait()


def hold_lock(tmp_path: Path, name: str) -> subprocess.Popen[str]:
    """A supervisor holding the file lock `name` under tmp_path, running sleep."""
    holder = spawn_cli("--name", name, "--", "sleep", "30", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    wait_until(lambda: (tmp_path / "coordinator" / f"{name}.lock").exists(), timeout=10)
    time.sleep(0.3)
    return holder


@pytest.mark.parametrize(
    ("command", "code", "needle"),
    [
        (["no-such-program-here"], 127, "command not found in PATH: no-such-program-here"),
        (["/nonexistent/program"], 127, "command not found: /nonexistent/program"),
        (["/dev/null"], 126, "not executable: /dev/null: permission denied"),
        (["/tmp"], 126, "not executable: /tmp: is a directory"),
        ([""], 127, "command not found"),
    ],
)
def test_command_is_resolved_before_contending(
    command: list[str], code: int, needle: str, tmp_path: Path
) -> None:
    """While another node holds the lock: the typo is reported at once, not at the
    first takeover."""
    holder = hold_lock(tmp_path, "busy")
    try:
        start = time.monotonic()
        status, output = run(
            "--name", "busy", "--", *command, env={"XDG_RUNTIME_DIR": str(tmp_path)}
        )
        assert status == code, output
        assert time.monotonic() - start < 5
        assert_one_clear_line(output, needle)
        assert "contending" not in output
    finally:
        holder.terminate()
        holder.wait()


def test_command_lookup_uses_path_like_the_shell(tmp_path: Path) -> None:
    """A non-executable file first in PATH is skipped for an executable one later; a
    directory of that name is skipped; only non-executable files give 126."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "tool").write_text("#!/bin/sh\nexit 0\n")  # not executable
    (first / "dir-tool").mkdir()
    (second / "tool").write_text("#!/bin/sh\nexit 7\n")
    (second / "tool").chmod(0o755)
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "PATH": f"{first}:{second}:/usr/bin:/bin"}
    status, output = run("--", "tool", env=env)
    assert status == 7, output
    status, output = run("--", "dir-tool", env=env)
    assert status == 127, output
    assert_one_clear_line(output, "command not found in PATH: dir-tool")
    (second / "tool").unlink()
    status, output = run("--", "tool", env=env)
    assert status == 126, output
    assert_one_clear_line(output, "command not executable: tool: permission denied")


def test_a_typo_of_status_is_a_command_that_takes_no_lock(tmp_path: Path) -> None:
    status, output = run("stauts", "--name", "x", env={"XDG_RUNTIME_DIR": str(tmp_path)})
    assert status == 127, output
    assert_one_clear_line(output, "command not found in PATH: stauts")
    assert not (tmp_path / "coordinator").exists() or not list(
        (tmp_path / "coordinator").iterdir()
    ), "the lock was taken for a command that does not exist"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_short_help_works_like_long_help(flag: str) -> None:
    status, output = run(flag)
    assert status == 0, output
    assert output.startswith("Usage: coordinator"), output
    assert "--wait-timeout" in output


def test_wait_timeout_zero_is_one_attempt(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    status, output = run("--name", "wt0", "--wait-timeout", "0", "--", "true", env=env)
    assert status == 0, output  # a free lock is taken
    holder = hold_lock(tmp_path, "wt0")
    try:
        start = time.monotonic()
        status, output = run("--name", "wt0", "--wait-timeout", "0", "--", "true", env=env)
        assert status == 4, output
        assert time.monotonic() - start < 5
    finally:
        holder.terminate()
        holder.wait()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_an_outage_is_repeated_in_the_log_while_it_lasts(monkeypatch: pytest.MonkeyPatch) -> None:
    from coordinator import supervisor
    from coordinator.backends import create_backend
    from coordinator.config import Config

    monkeypatch.setattr(supervisor, "DOWN_REMINDER", 0.5)
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = Config(("true",), backend="redis", url=url, ttl=2, grace=0.5, wait_timeout=3.2)
    lines = Lines()
    logger = logging.getLogger("coordinator")
    logger.addHandler(lines)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        code = supervisor.Supervisor(config, create_backend(config)).run()
    finally:
        logger.removeHandler(lines)
    assert code == 4
    first = [line for line in lines.lines if line.startswith("cannot reach the backend")]
    again = [line for line in lines.lines if line.startswith("still cannot reach the backend")]
    assert len(first) == 1, lines.lines
    assert 2 <= len(again) <= 7, lines.lines  # backoff with jitter: about one a second
    assert "Connection refused" in again[0] or "connect" in again[0].lower(), again


PG_CLOSED = "postgresql://u:{secret}@127.0.0.1:{port}/db"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ttl", "inf"], "--ttl must be from 0.5 to 1e+09 seconds, got inf"),
        (["--ttl", "nan"], "--ttl must be from 0.5 to 1e+09 seconds, got nan"),
        (["--ttl", "-1"], "--ttl must be from 0.5"),
        (["--ttl", "1e-300"], "got 1e-300"),
        (["--ttl", "0.4"], "got 0.4"),
        (["--ttl", "1e300"], "got 1e+300"),
        (["-b", "redis", "--ttl", "1e300"], "got 1e+300"),
        (["--grace", "nan"], "--grace must be from 0"),
        (["--grace", "-0.5"], "--grace must be from 0"),
        (["--ttl", "1e9", "--grace", "inf"], "--grace must be from 0 to 1e+09 seconds, got inf"),
        (["--wait-timeout", "inf"], "--wait-timeout must be from 0 to 1e+09 seconds, got inf"),
        (["--wait-timeout", "-1"], "--wait-timeout must be from 0"),
        (["--wait-timeout", "nan"], "--wait-timeout must be from 0"),
        (["--safety-delay", "1e10"], "--safety-delay must be from 0 to 1e+09 seconds"),
        (["--safety-delay", "nan"], "--safety-delay must be from 0"),
        (["-b", "postgres", "--url", PG_CLOSED, "--ttl", "1e9"], "--ttl must be at most 98301"),
        (["-b", "postgres", "--url", PG_CLOSED, "--ttl", "98302"], "--ttl must be at most 98301"),
        (["-b", "consul", "--url", "http://127.0.0.1:{port}", "--ttl", "2881"], "at most 2880"),
        (["--name", "a\nb"], "--name must not contain control characters"),
        (["--name", "a\x1b[31mb"], "--name must not contain control characters"),
        (["--name", "a\u2028b"], "--name must not contain control characters, line separators"),
        (["--name", "x" * 201], "--name is 201 characters long; at most 200 allowed"),
        (["--node-id", "n\r1"], "--node-id must not contain control characters"),
        (["--key-prefix", "p\t/"], "--key-prefix must not contain control characters"),
        (["--key-prefix", "p" * 101], "--key-prefix is 101 characters long; at most 100"),
        (["-b", "postgres", "--url", PG_CLOSED, "--node-id", "nöde"], "printable ASCII"),
        (["-b", "consul", "--ttl", "10", "--key-prefix", "", "--name", "/x"], "path segments"),
        (["-b", "consul", "--ttl", "10", "--name", "a//b"], "'//'"),
        (["-b", "consul", "--ttl", "10", "--name", "a/../b"], "path segments"),
        (["-b", "consul", "--ttl", "10", "--name", "x "], "trailing spaces"),
        (["-b", "consul", "--ttl", "10", "--name", "a%2fb"], "'%'"),
    ],
)
def test_out_of_range_values_are_refused_at_once(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    """Each numeric option and each name has a range (docs/limits.md): outside it, one
    line and exit 2, before any backend is contacted (the addresses are closed ports)."""
    port = free_port()
    args = [arg.format(secret=SECRET, port=port) for arg in args]
    if "--url" not in args:
        args = ["--url", f"http://127.0.0.1:{port}", *args] if "consul" in args else args
    start = time.monotonic()
    status, output = run(
        "--wait-timeout", "30", *args, "--", "true", env={"XDG_RUNTIME_DIR": str(tmp_path)}
    )
    assert status == 2, output
    assert time.monotonic() - start < 10
    assert_one_clear_line(output, needle)


def test_invalid_utf8_in_the_command_line_is_one_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 (surrogates once decoded) in a name are refused; in
    the command, from which the default name is derived, they pass to the child."""
    env = cli_env({"XDG_RUNTIME_DIR": str(tmp_path)})
    bad = b"\xff".decode("utf-8", "surrogateescape")
    base = [sys.executable, "-m", "coordinator"]
    result = subprocess.run(
        [*base, "--name", f"x{bad}", "--", "true"],
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    assert_one_clear_line(result.stderr, "--name must not contain", "invalid UTF-8")
    result = subprocess.run(
        [*base, "--", "printf", f"%s{bad}"],
        capture_output=True,
        env=env,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"\xff"
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://127.0.0.1:{port}/0?foo=bar", "unknown option 'foo'"),
        ("redis://127.0.0.1:{port}/0?protocol=9", "protocol must be either 2 or 3"),
        ("redis://127.0.0.1:abc/0", "Port could not be cast"),
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://127.0.0.1:0/0", "invalid port 0"),
        ("redis://:{secret}@127.0.0.1:{port}/abc", "database number like /0"),
        ("redis://127.0.0.1:{port}/-1", "database number like /0"),
        ("postgresql://u:{secret}@127.0.0.1:abc/db", "invalid port 'abc'"),
        ("postgresql://u:{secret}@127.0.0.1:99999/db", "invalid port '99999'"),
        ("host=127.0.0.1 port=0 password={secret}", "invalid port '0'"),
        (
            "postgresql://u:{secret}@127.0.0.1:{port}/db?foo=bar",
            'invalid URI query parameter: "foo"',
        ),
        ("postgresql://u:{secret}@127.0.0.1:{port}/db?sslmode=bogus", "invalid sslmode value"),
    ],
)
def test_url_mistakes_exit_2_at_once(url: str, needle: str) -> None:
    """Waiting cannot fix these: one line, exit 2, with no server to answer at all."""
    url = url.format(secret=SECRET, port=free_port())
    backend = "redis" if url.startswith("redis") else "postgres"
    start = time.monotonic()
    status, output = run("-b", backend, "--url", url, "--", "true")
    assert status == 2, output
    assert time.monotonic() - start < 10
    assert_one_clear_line(output, needle)


def test_redis_database_out_of_range_exits_2(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/9999"
    status, output = run("-b", "redis", "--url", url, "--", "true")
    assert status == 2, output
    assert_one_clear_line(output, "DB index is out of range")
    status, output = run("status", "-b", "redis", "--url", url, "--name", "x")
    assert status == 2, output
    assert_one_clear_line(output, "DB index is out of range")


def test_postgres_option_the_server_refuses_exits_2(postgres_url: str) -> None:
    status, output = run(
        "-b", "postgres", "--url", f"{postgres_url}?options=-c%20foo", "--", "true"
    )
    assert status == 2, output
    assert_one_clear_line(output, "requires a value")


def test_postgres_wrong_password_exits_3(postgres_url: str) -> None:
    url = re.sub(r"(://[^:/]+:)[^@]*@", rf"\g<1>{SECRET}@", postgres_url)
    status, output = run("-b", "postgres", "--url", url, "--", "true")
    assert status == 3, output
    assert_one_clear_line(output, "password authentication failed")


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("FATAL:  the database system is starting up", "BackendUnavailable"),
        ("FATAL:  the database system is shutting down", "BackendUnavailable"),
        ("FATAL:  sorry, too many clients already", "BackendUnavailable"),
        ("connection failed: Connection refused", "BackendUnavailable"),
        (
            'connection is bad: invalid integer value "abc" for connection option "port"',
            "ConfigError",
        ),
        ('connection is bad: invalid port number: "99999"', "ConfigError"),
        ('FATAL:  password authentication failed for user "u"', "BackendRejected"),
        ('FATAL:  permission denied for database "app"', "BackendRejected"),
        # Both were retried for ever (the server's and libpq's words, PostgreSQL 15).
        (
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            "FATAL:  must be superuser or replication role to start walsender",
            "BackendRejected",
        ),
        (
            "connection is bad: GSSAPI encryption required but no credential cache",
            "BackendRejected",
        ),
    ],
)
def test_postgres_errors_are_classified_once(message: str, outcome: str) -> None:
    """libpq reports connection errors without a SQLSTATE: the text decides."""
    import psycopg

    from coordinator.backends.postgres import PostgresBackend

    backend = PostgresBackend(f"postgresql://u:{SECRET}@127.0.0.1:1/db", 10, 1, "p/", "n")
    result = backend._translate(psycopg.OperationalError(message))
    assert type(result).__name__ == outcome
    assert SECRET not in str(result)


def test_redis_errors_waiting_fixes_are_retried() -> None:
    import redis

    from coordinator.backends.redis import translate

    for error in (
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1."),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
    ):
        assert type(translate(error, "x")).__name__ == "BackendUnavailable", error
    for error in (
        redis.exceptions.ResponseError("DB index is out of range"),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key"),
    ):
        assert type(translate(error, "x")).__name__ == "ConfigError", error
    error = redis.exceptions.ResponseError("unknown command 'EVALSHA'")
    assert type(translate(error, "x")).__name__ == "BackendRejected"
    # A sentinel's answer quotes the arguments, our lease token among them: not shown.
    error = redis.exceptions.ResponseError(
        "unknown command 'EVALSHA', with args beginning with: 'ab12' '1' 'k' 'tok3n'"
    )
    assert "tok3n" not in str(translate(error, "x"))


def test_a_nested_coordinator_on_its_parents_lock_is_refused(tmp_path: Path) -> None:
    """The child inherits COORDINATOR_NAME: the same line nested would wait forever."""
    inner = f"{sys.executable} -m coordinator --url {tmp_path} -- true; echo inner=$?"
    result = run_cli("--url", str(tmp_path), "--name", "outer", "--", "sh", "-c", inner, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "inner=2" in result.stdout, result.stdout + result.stderr
    assert "would wait for its own parent forever" in result.stderr
