"""Odd input found by running the program as a new user would: each gives one line
and a documented exit code at once, no traceback, no password. The cases need no
server (closed loopback ports at most), so each run takes a fraction of a second."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.errors import ConfigError
from coordinator.observe import parse_address
from tests.cluster import cli_env, run_cli
from tests.servers import free_port

SECRET = "Pw-odd-input-9"
CLOSED = free_port()


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1, output
    assert "Traceback" not in output and SECRET not in output, output
    return errors[0]


@pytest.mark.parametrize(
    ("backend", "variable", "value"),
    [
        ("redis", "--url", f"redis://:{SECRET}\udcff@127.0.0.1:{CLOSED}/0"),
        ("redis", "REDIS_URL", f"redis+sentinel://:{SECRET}\udcff@127.0.0.1:{CLOSED}/s"),
        ("redis", "COORDINATOR_URL", f"redis://:{SECRET}@127.0.0.1:{CLOSED}/0?x=\udcff"),
        ("postgres", "DATABASE_URL", f"postgresql://u:{SECRET}\udcff@127.0.0.1:{CLOSED}/d"),
        ("consul", "CONSUL_HTTP_TOKEN", f"{SECRET}\udcff"),
    ],
    ids=["url", "REDIS_URL", "COORDINATOR_URL", "DATABASE_URL", "CONSUL_HTTP_TOKEN"],
)
def test_an_address_or_secret_that_is_not_utf8_is_a_usage_error(
    backend: str, variable: str, value: str
) -> None:
    """A byte the locale cannot decode (a lone surrogate once in Python): exit 2 at
    start, for `status` too, rather than a traceback or an internal error."""
    args = ["--url", value] if variable == "--url" else []
    env = {} if variable == "--url" else {variable: value}
    if backend == "consul":
        args = ["--url", f"http://127.0.0.1:{CLOSED}"]
    for command in (
        ["-b", backend, *args, "--wait-timeout", "0", "--", "true"],
        ["status", "-b", backend, *args, "-n", "x", "--timeout", "1"],
    ):
        result = run_cli(*command, env=env, timeout=20)
        assert result.returncode == 2, result.stderr
        line = one_error_line(result.stdout + result.stderr)
        label = "--url" if variable == "COORDINATOR_URL" else variable
        assert f"{label} is not valid UTF-8" in line, line


def run_to(stdout: int, *args: str) -> tuple[int, str]:
    """Run with stdout on the descriptor `stdout`; the exit code and stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=cli_env(),
        timeout=20,
    )
    return result.returncode, result.stderr.decode()


@pytest.mark.parametrize(
    "args", [["status", "-n", "x"], ["status", "-n", "x", "--json"], ["--help"], ["--version"]]
)
def test_an_answer_that_cannot_be_written_is_not_an_answer(args: list[str], tmp_path: Path) -> None:
    """`status` says held (0) or free (1) by its code: with its answer lost it must say
    neither. A reader that went away (a closed pipe) gives 141, silently, as for a
    program killed by SIGPIPE; a full device 74 and one line; never 70 (a bug)."""
    if args[0] == "status":
        args = ["status", "-b", "file", "--url", str(tmp_path), *args[1:]]
    read, write = os.pipe()
    os.close(read)
    try:
        code, err = run_to(write, *args)
    finally:
        os.close(write)
    assert (code, err) == (141, ""), err
    with open("/dev/full", "wb") as full:
        code, err = run_to(full.fileno(), *args)
    assert code == 74, err
    assert "cannot write to standard output" in one_error_line(err)


def test_a_closed_stderr_keeps_the_exit_code() -> None:
    script = f"exec {sys.executable} -m coordinator --bogus 2>&-"
    result = subprocess.run(["sh", "-c", script], env=cli_env(), timeout=20, check=False)
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("instruction", "words", "cword"),
    [
        ("bash_complete", "coordinator --ba", "abc"),
        ("zsh_complete", "coordinator --ba", ""),
        ("complete_bash", "coordinator --ba", "x"),
        ("bash_complete", None, "1"),
    ],
)
def test_completion_with_odd_variables_is_a_usage_error(
    instruction: str, words: str | None, cword: str
) -> None:
    """COMP_WORDS and COMP_CWORD come from the completion script; set by hand they can
    be anything: one line and exit 2, no traceback."""
    env = {**cli_env(), "_COORDINATOR_COMPLETE": instruction, "COMP_CWORD": cword}
    env.pop("COMP_WORDS", None)
    if words is not None:
        env["COMP_WORDS"] = words
    result = subprocess.run(
        [sys.executable, "-m", "coordinator"], capture_output=True, text=True, env=env, timeout=20
    )
    assert result.returncode == 2, result.stderr
    assert "shell completion needs COMP_WORDS" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        (
            f"redis+sentinel://:{SECRET}@127.0.0.1:{CLOSED}/s/{'9' * 20}",
            "0 to 2147483647",
        ),
        (f"redis+sentinel://:{SECRET}@127.0.0.1:{CLOSED}/s?db=9999999999999999", "0 to 2147483647"),
        (f"redis://:{SECRET}@127.0.0.1:{CLOSED}/99999999999999999999", "0 to 2147483647"),
        (f"redis+sentinel://:{SECRET}@127.0.0.1:{CLOSED}/s/\u0663", "/service/<database number>"),
        (f"redis+sentinel://:{SECRET}@127.0.0.1:\u0663/s", "is not host or host:port"),
        (f"redis://:{SECRET}@127.0.0.1:{CLOSED}/\u0663", "must be a database number"),
        (f"rediss://:{SECRET}@127.0.0.1:{CLOSED}/0?ssl_ca_certs=/nonexistent", "does not exist"),
        (f"redis+sentinel://127.0.0.1:{CLOSED}/s?=x", "an option without a name"),
        (
            f"rediss+sentinel://:{SECRET}@127.0.0.1:{CLOSED}/s?ssl_ca_certs=/nonexistent",
            "?ssl_ca_certs=/nonexistent does not exist",
        ),
        (
            f"rediss+sentinel://127.0.0.1:{CLOSED}/s?ssl_certfile=/no/c.pem&ssl_keyfile=/no/k.pem",
            "?ssl_certfile=/no/c.pem does not exist",
        ),
    ],
    ids=[
        "sentinel-db-huge",
        "sentinel-query-db-huge",
        "db-huge",
        "sentinel-db-not-ascii",
        "sentinel-port-not-ascii",
        "db-not-ascii",
        "ca-missing",
        "option-without-a-name",
        "sentinel-ca-missing",
        "sentinel-client-cert-missing",
    ],
)
def test_redis_urls_that_waiting_cannot_fix_exit_2(url: str, needle: str) -> None:
    """Each was retried for ever ("value is not an integer or out of range", "No such
    file or directory" as if the server were unreachable) or read as another number
    (int() takes digits of any script)."""
    commands = [["-b", "redis", "--url", url, "--wait-timeout", "5", "--", "true"]]
    if "ssl_ca_certs" in url:  # status creates the backend alike: one case is enough
        commands.append(["status", "-b", "redis", "--url", url, "-n", "x", "--timeout", "5"])
    for command in commands:
        result = run_cli(*command, timeout=20)
        assert result.returncode == 2, result.stderr
        assert needle in one_error_line(result.stderr)


def test_status_writes_what_the_locale_cannot_encode_as_escapes(tmp_path: Path) -> None:
    """An ASCII stdout (a C locale, PYTHONIOENCODING) and a lock directory, name or
    node id that is not ASCII: the answer is written with backslash escapes."""
    where = tmp_path / "n\u0153ud"
    result = run_cli(
        "status", "-b", "file", "--url", str(where), "-n", "x", env={"PYTHONIOENCODING": "ascii"}
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("x: free (") and "n\\u0153ud" in result.stdout, result.stdout


def test_a_status_file_that_is_not_a_regular_file_is_left_alone(tmp_path: Path) -> None:
    """The status file is renamed into place, which replaces whatever is there: run as
    root, `--status-file /dev/null` left a regular file for /dev/null. A pipe stands in
    for the device here."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run_cli("--status-file", str(fifo), "-b", "file", "--url", str(tmp_path), "--", "true")
    assert result.returncode == 2, result.stderr
    assert "is not a regular file" in one_error_line(result.stderr)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("address", ["127.0.0.1:\u0663", ":\uff19\uff11\uff10\uff10"])
def test_a_metrics_port_in_other_digits_is_refused(address: str) -> None:
    """int() reads digits of any script: "127.0.0.1:٣" served on port 3."""
    with pytest.raises(ConfigError, match="--metrics-address must be HOST:PORT"):
        parse_address(address)


def test_ctrl_c_while_starting_ends_the_program_without_a_traceback() -> None:
    """Python's SIGINT handler raised KeyboardInterrupt in whatever was importing
    (click, a client library): a traceback and exit 1 for a Ctrl-C in the first tenth
    of a second. The program's entry puts the default back before importing anything
    (the supervisor installs its own handlers later)."""
    probe = (
        "import signal, coordinator.__main__; "
        "print(signal.getsignal(signal.SIGINT) == signal.SIG_DFL)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=cli_env(), timeout=20
    )
    assert result.stdout.strip() == "True", result.stdout + result.stderr


def test_a_password_in_the_command_never_shows_in_the_default_name(tmp_path: Path) -> None:
    """`coordinator -- celery beat -b redis://:PASSWORD@host/0`, without --name: the
    name derived from the command was in every log line and in `status`."""
    command = ["--", "true", "beat", "-b", f"redis://:{SECRET}@127.0.0.1:{CLOSED}/0"]
    file_backend = ["-b", "file", "--url", str(tmp_path)]
    result = run_cli(*file_backend, "--wait-timeout", "0", *command)
    assert result.returncode == 0, result.stderr
    assert "-redis-***-127.0.0.1-" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    status = run_cli("status", *file_backend, *command)
    assert status.returncode == 1 and "-***-" in status.stdout, status.stdout
    assert SECRET not in status.stdout + status.stderr


@pytest.mark.parametrize(
    ("url", "env", "says"),
    [
        ("http://127.0.0.1:0", {}, "malformed consul address"),
        (f"http://127.0.0.1:{CLOSED}", {"CONSUL_HTTP_TOKEN": f"{SECRET}\nX: y"}, "ACL token"),
        (f"http://127.0.0.1:{CLOSED}", {"CONSUL_HTTP_TOKEN": f"{SECRET} x"}, "ACL token"),
        (f"https://127.0.0.1:{CLOSED}", {"CONSUL_CACERT": "/nonexistent/ca.pem"}, "CONSUL_CACERT"),
        (
            f"https://127.0.0.1:{CLOSED}",
            {"CONSUL_CLIENT_CERT": "/nonexistent/c.pem", "CONSUL_CLIENT_KEY": "/nonexistent/k"},
            "CONSUL_CLIENT_CERT",
        ),
    ],
    ids=["port-0", "token-newline", "token-space", "cacert-missing", "client-cert-missing"],
)
def test_consul_settings_no_waiting_can_fix_are_usage_errors(
    url: str, env: dict[str, str], says: str
) -> None:
    """Port 0 was read as 8500, a token with a newline failed every request (exit 4
    after --wait-timeout), a missing CA file was an internal error (70)."""
    for command in (
        ["-b", "consul", "--url", url, "--wait-timeout", "30", "--", "true"],
        ["status", "-b", "consul", "--url", url, "-n", "x", "--timeout", "10"],
    ):
        result = run_cli(*command, env=env, timeout=20)
        assert result.returncode == 2, result.stdout + result.stderr
        assert says in one_error_line(result.stdout + result.stderr)
