"""Property: any command line, URL and environment gives an exit code from the
documented set within a few seconds, with no traceback and no password in the output.

The CLI runs in-process (coordinator.cli.main) against closed loopback ports, with a
small --wait-timeout, so each example takes well under a second; a few real
subprocess runs check the same end to end. Hosts are loopback addresses or
unparsable text only: nothing is ever sent elsewhere, not even a DNS query.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cluster import run_cli
from tests.servers import free_port

# Exit codes the program documents (docs/exit-codes.md); the children below exit 0 or 1.
DOCUMENTED = {0, 1, 2, 3, 4, 69, 126, 127}
# A password made of the characters URLs reserve, between two markers that must never
# appear in any output.
SECRET = "Zq9x:/?#[]@!$&'()*+,;=%Wv7k"
MARKERS = ("Zq9x", "Wv7k")
CLOSED = free_port()  # nothing listens there for the whole run
EXAMPLE_LIMIT = 4.0  # seconds one in-process run may take


def mostly(valid: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid seven times in eight, so most examples get as far as the backend."""
    # Not 0: Hypothesis favours the ends of a range.
    return st.integers(0, 7).flatmap(lambda n: odd if n == 3 else valid)


odd_seconds = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "-1", "0", "1e-300", "1e300", "1e9", "abc", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
ttls = mostly(st.floats(min_value=0.5, max_value=40).map(lambda x: f"{x:g}"), odd_seconds)
graces = mostly(st.floats(min_value=0, max_value=3).map(lambda x: f"{x:g}"), odd_seconds)
# Valid waits stay short so a standby facing a closed port gives up quickly.
waits = mostly(
    st.floats(min_value=0, max_value=0.5).map(lambda x: f"{x:g}"),
    st.sampled_from(["inf", "nan", "-1", "1e300", "abc", "-0"]),
)
hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "[::1", "", "127.0.0.1:"])
ports = mostly(st.just(str(CLOSED)), st.sampled_from(["0", "99999", "abc", "-1", "", "65536"]))
# Percent-encoded, as a URL needs it; RAW_PASSWORDS break the URL's syntax.
passwords = st.just(quote(SECRET, safe=""))
RAW_PASSWORDS = st.sampled_from([SECRET, quote(SECRET, safe=":@/")])
users = st.sampled_from(["", "u", "app", "u%"])
paths = mostly(
    st.sampled_from(["", "/", "/0", "/15", "/db"]),
    st.sampled_from(["/99", "/-1", "/abc", "/1%00", "//x"]),
)
queries = mostly(
    st.sampled_from(["", "?connect_timeout=1", "?sslmode=disable", "?socket_timeout=1"]),
    st.sampled_from(
        [
            "?foo=bar",
            "?db=abc",
            "?protocol=9",
            "?socket_timeout=abc",
            "?sslmode=bogus",
            f"?password={quote(SECRET, safe='')}",
            "?options=-c%20foo",
        ]
    ),
)
SCHEMES = {
    "file": ["file"],
    "redis": ["redis", "rediss", "unix"],
    "postgres": ["postgresql", "postgres"],
    "consul": ["http", "https"],
    "nope": ["ftp"],
}


@st.composite
def urls(
    draw: st.DrawFn, backend: str | None = None, secrets: st.SearchStrategy[str] = passwords
) -> str:
    fitting = st.sampled_from(SCHEMES[backend]) if backend else st.nothing()
    any_scheme = st.sampled_from([s for group in SCHEMES.values() for s in group] + [""])
    scheme = draw(mostly(fitting, any_scheme) if backend else any_scheme)
    user, password = draw(users), draw(secrets)
    auth = draw(st.sampled_from(["", f"{user}:{password}@", f":{password}@", f"{user}@"]))
    host, port = draw(hosts), draw(ports)
    netloc = f"{auth}{host}" + (f":{port}" if port else "")
    return f"{scheme}://{netloc}{draw(paths)}{draw(queries)}" if scheme else netloc


conninfos = st.builds(
    lambda port, extra: f"host=127.0.0.1 port={port} password={SECRET} {extra}".strip(),
    ports,
    st.sampled_from(["", "dbname=x", "bogus=1", "sslmode=bogus", "user='a b'"]),
)
names = mostly(
    st.from_regex(r"[a-z][a-z0-9_./-]{0,20}", fullmatch=True),
    st.one_of(
        st.sampled_from(["/x", "a//b", "a/../b", " x", "x\ny", "é", "{x}", "a" * 201, "x "]),
        st.text(max_size=12),
    ),
)
commands = mostly(
    st.sampled_from([["true"], ["false"]]),
    st.sampled_from([["/nonexistent/p"], ["/dev/null"], ["/tmp"], ["stauts"], [""], []]),
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """Options in any order, some invalid, then the command."""
    status = draw(st.integers(0, 3)) == 2
    backend = draw(
        mostly(st.sampled_from(["file", "redis", "postgres", "consul"]), st.just("nope"))
    )
    argv = ["status"] if status else []
    argv += ["--backend", backend]
    if draw(st.integers(0, 3)) != 2:
        url = urls(backend) if backend != "postgres" else st.one_of(urls(backend), conninfos)
        argv += ["--url", draw(url)]
    if draw(st.booleans()):
        argv += ["--name", draw(names)]
    if draw(st.integers(0, 4)) == 2:
        argv += ["--key-prefix", draw(st.sampled_from(["", "/", "p/", "p//", "p\t", "%"]))]
    if status:
        argv += ["--timeout", draw(waits)]
    else:
        argv += ["--wait-timeout", draw(waits)]
        if backend == "consul" and draw(st.booleans()):
            argv += ["--ttl", "10"]
        for option, values in (("--ttl", ttls), ("--grace", graces), ("--safety-delay", graces)):
            if draw(st.integers(0, 3)) == 2:
                argv += [option, draw(values)]
        if draw(st.integers(0, 4)) == 2:
            argv += ["--node-id", draw(names)]
        if draw(st.integers(0, 4)) == 2:
            argv += ["--log-format", draw(st.sampled_from(["text", "json", "xml"]))]
        if draw(st.integers(0, 4)) == 2:
            argv += ["--log-level", draw(st.sampled_from(["debug", "info", "loud"]))]
    if draw(st.integers(0, 9)) == 5:
        argv += [draw(st.sampled_from(["--nmae", "-h", "--ttl", "--", "-x"]))]
    command = draw(commands)
    return [*argv, "--", *command] if command or draw(st.booleans()) else argv


URL_VARIABLES = ("COORDINATOR_URL", "REDIS_URL", "DATABASE_URL", "CONSUL_HTTP_ADDR")
environments = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(URL_VARIABLES, urls()),
        "DATABASE_URL": st.one_of(urls(), conninfos),
        "COORDINATOR_TTL": ttls,
        "COORDINATOR_GRACE": graces,
        "COORDINATOR_NAME": names,
        "COORDINATOR_LOG_FORMAT": st.sampled_from(["text", "json", "yaml"]),
        "CONSUL_HTTP_TOKEN": st.just(SECRET),
        "PGPORT": ports,
        "PGPASSWORD": st.just(SECRET),
    },
).map(lambda env: {k: v for k, v in env.items() if "\x00" not in v})  # no NUL in an environment

# Everything the program reads from the environment, kept out of the examples' way.
AMBIENT = (
    "COORDINATOR_",
    "REDIS_URL",
    "DATABASE_URL",
    "CONSUL_",
    "PG",
)


def confined(values: list[str], runtime: Path) -> list[str]:
    """file:///dir URLs moved under the test's directory: the file backend creates
    its directory."""
    return [value.replace("file:///", f"file://{runtime}/") for value in values]


@contextlib.contextmanager
def environment(extra: dict[str, str], runtime: Path) -> Iterator[None]:
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(AMBIENT):
            del os.environ[key]
    # Only loopback: libpq's default host is a local socket, redis and consul default
    # to localhost.
    extra = dict(zip(extra, confined(list(extra.values()), runtime), strict=True))
    os.environ.update({"XDG_RUNTIME_DIR": str(runtime), "PGHOST": "127.0.0.1", **extra})
    if os.environ.get("PGPORT") is None:
        os.environ["PGPORT"] = str(CLOSED)
    # A file backend --url that is not a URL is a directory relative to here.
    cwd = os.getcwd()
    os.chdir(runtime)
    try:
        yield
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


class Hung(BaseException):
    """The run went on past twice EXAMPLE_LIMIT: stopped so the test fails, not hangs."""


def hung(signum: int, frame: FrameType | None) -> None:
    raise Hung()


def run_in_process(argv: list[str]) -> tuple[int, str, float]:
    """main(argv) with stdout and stderr captured; code -1 if it had to be stopped."""
    from coordinator.cli import main

    out = io.StringIO()
    start = time.monotonic()
    logger = logging.getLogger("coordinator")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 2 * EXAMPLE_LIMIT)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Hung:
            code = -1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate
    return code, out.getvalue(), time.monotonic() - start


def check(code: int, output: str, took: float, argv: list[str]) -> None:
    assert code in DOCUMENTED, (code, argv, output)
    assert "Traceback" not in output, (argv, output)
    assert "internal error" not in output, (argv, output)
    assert took < EXAMPLE_LIMIT, (took, argv, output)


def leaked(output: str) -> list[str]:
    return [marker for marker in MARKERS if marker in output]


@settings(
    max_examples=int(os.environ.get("COORDINATOR_FUZZ_EXAMPLES", "200")),
    deadline=None,  # the run's own clock is checked, against EXAMPLE_LIMIT
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(argv=command_lines(), env=environments)
def test_any_input_gives_a_documented_exit_code(
    argv: list[str], env: dict[str, str], tmp_path: Path
) -> None:
    argv = confined(argv, tmp_path)
    with environment(env, tmp_path):
        code, output, took = run_in_process(argv)
    check(code, output, took, argv)
    if not is_a_directory(argv, env):
        assert not leaked(output), (argv, env, output)


def is_a_directory(argv: list[str], env: dict[str, str]) -> bool:
    """The file backend's --url is a directory unless it has a scheme: its name is
    shown as given, like any path."""
    if argv[argv.index("--backend") + 1] != "file":
        return False
    url = argv[argv.index("--url") + 1] if argv[2:4] and argv[2] == "--url" else ""
    if argv[:1] == ["status"] and argv[3:4] == ["--url"]:
        url = argv[4]
    url = url or env.get("COORDINATOR_URL", "")
    return bool(url) and "://" not in url


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
@given(backend=st.sampled_from(["redis", "postgres", "consul", "file"]), data=st.data())
def test_a_password_that_breaks_the_url_never_shows(
    backend: str, data: st.DataObject, tmp_path: Path
) -> None:
    url = data.draw(urls(backend, RAW_PASSWORDS).filter(lambda u: "Zq9x" in u))
    argv = confined(
        ["--backend", backend, "--url", url, "--wait-timeout", "0", "--", "true"], tmp_path
    )
    with environment({}, tmp_path):
        code, output, took = run_in_process(argv)
    check(code, output, took, argv)
    assert not leaked(output), (argv, output)


# -- passwords in URLs the parsers cannot read -------------------------------------

QUOTED = SECRET.replace("\\", "\\\\").replace("'", "\\'")  # for a libpq conninfo

SECRET_CASES = [
    ("redis", f"redis://u:{quote(SECRET, safe='')}@127.0.0.1:{CLOSED}/0"),
    ("redis", f"redis://u:{quote(SECRET, safe='')}@127.0.0.1:{CLOSED}/0?foo=bar"),
    ("redis", f"redis://127.0.0.1:{CLOSED}/0?password={quote(SECRET, safe='')}"),
    ("postgres", f"postgresql://u:{quote(SECRET, safe='')}@127.0.0.1:{CLOSED}/db"),
    ("postgres", f"postgresql://u:{quote(SECRET, safe='')}@127.0.0.1:abc/db"),
    ("redis", f"redis://u:{quote(SECRET, safe='')}@127.0.0.1:abc/0"),
    ("consul", f"http://u:{quote(SECRET, safe='')}@127.0.0.1:abc"),
    ("postgres", f"host=127.0.0.1 port={CLOSED} password={quote(SECRET, safe='')}"),
    ("consul", f"http://u:{quote(SECRET, safe='')}@127.0.0.1:{CLOSED}"),
    ("postgres", f"host=127.0.0.1 port={CLOSED} password='{QUOTED}'"),
    ("postgres", f"host=127.0.0.1 port=abc password='{QUOTED}'"),
    *(
        pytest.param(backend, url)
        for backend, url in [
            ("redis", f"redis://u:{SECRET}@127.0.0.1:{CLOSED}/0"),
            ("postgres", f"postgresql://u:{SECRET}@127.0.0.1:{CLOSED}/db"),
            ("consul", f"http://u:{SECRET}@127.0.0.1:{CLOSED}"),
            ("file", f"file://u:{SECRET}@127.0.0.1/x"),
            # A libpq conninfo given to another backend.
            ("redis", f"host=127.0.0.1 password={quote(SECRET, safe='')}"),
        ]
    ),
]


@pytest.mark.parametrize(("backend", "url"), SECRET_CASES)
@pytest.mark.parametrize("command", ["run", "status"])
def test_no_password_in_the_output(backend: str, url: str, command: str, tmp_path: Path) -> None:
    argv = ["--backend", backend, "--url", url, "--name", "x"]
    argv = ["status", *argv, "--timeout", "1"] if command == "status" else argv
    argv += [] if command == "status" else ["--ttl", "10", "--wait-timeout", "0.3", "--", "true"]
    with environment({}, tmp_path):
        code, output, took = run_in_process(argv)
    check(code, output, took, argv)
    assert not leaked(output), output


# -- the same end to end, in real processes ---------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--ttl", "nan", "--", "true"],
        ["-b", "redis", "--url", f"redis://u:{quote(SECRET, safe='')}@127.0.0.1:abc", "--", "true"],
        [
            "-b",
            "postgres",
            "--url",
            f"postgresql://127.0.0.1:{CLOSED}/db?sslmode=bogus",
            "--",
            "true",
        ],
        ["status", "-b", "redis", "--url", f"redis://127.0.0.1:{CLOSED}/0?foo=1", "-n", "x"],
        ["--wait-timeout", "0.2", "-b", "redis", "--url", f"redis://127.0.0.1:{CLOSED}", "true"],
        ["stauts"],
    ],
)
def test_a_real_process_gives_a_documented_exit_code(argv: list[str], tmp_path: Path) -> None:
    start = time.monotonic()
    result = run_cli(*argv, env={"XDG_RUNTIME_DIR": str(tmp_path)}, timeout=20)
    output = result.stdout + result.stderr
    check(result.returncode, output, min(time.monotonic() - start, 0.0), argv)
    assert time.monotonic() - start < 10
    assert not leaked(output), output
