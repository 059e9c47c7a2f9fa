"""Odd input found by running the program as a new user would: each gives one line
and a documented exit code at once, no traceback, no password. The cases need no
server (closed loopback ports at most), so each run takes a fraction of a second."""

from __future__ import annotations

import pytest

from tests.cluster import run_cli
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
