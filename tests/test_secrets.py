"""No password or token in any output, whatever characters it holds.

The secrets below hold every reserved URL character (: / ? # [ ] @ ! $ & ' ( ) * + , ;
= and %), each between two others, so a leak of any piece of them shows. They are given
in --url, in COORDINATOR_URL and in the backends' own variables, to supervisors and
`status` against real servers, and every output is searched: the log (text and JSON),
`status` (text and JSON), the error line, /metrics, /healthz and the status file.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from coordinator import redact
from coordinator.config import default_name
from tests.cluster import run_cli, spawn_cli, stop_cli, wait_until
from tests.servers import ConsulServer, PostgresServer, RedisServer, free_port

RESERVED = ":/?#[]@!$&'()*+,;=%"
# A letter or digit between each two reserved characters: any 6 characters in a row
# of it hold at least two of them, so no ordinary text matches a piece of it.
SECRET = "Pw" + "".join(f"{c}{'123456789abcdefghijk'[i]}" for i, c in enumerate(RESERVED))
# What libpq takes raw in a URL's user info ('#', '?', '[' are not special to it).
RAW_SECRET = "Raw#q?1[2]3!4$5&6'7(8)9*a+b,c;d=e:f"
WINDOW = 6


def leaks(output: str, *secrets: str) -> list[str]:
    """Pieces of `secrets` (raw or percent-encoded) that appear in `output`."""
    found = []
    for secret in secrets:
        for form in (secret, quote(secret, safe=""), quote(secret)):
            for i in range(len(form) - WINDOW + 1):
                if form[i : i + WINDOW] in output:
                    found.append(form[i : i + WINDOW])
    return found


def fetch(url: str, method: str = "GET") -> str:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def every_output(
    tmp_path: Path, backend: str, url: str | None, env: dict[str, str], log_format: str
) -> str:
    """Run a supervisor until its child runs; collect its log, /metrics, /healthz,
    its status file and `status` in text and JSON."""
    port, status_file = free_port(), tmp_path / "status.json"
    where = ["-b", backend, *(["--url", url] if url else []), "--name", "secret-test"]
    env = {**env, "COORDINATOR_LOG_FORMAT": log_format}
    proc = spawn_cli(
        *where,
        *("--ttl", "10", "--grace", "2", "--safety-delay", "0", "--node-id", "n1"),
        *("--metrics-address", f"127.0.0.1:{port}", "--status-file", str(status_file)),
        *("--", sys.executable, "-c", "import time; time.sleep(60)"),
        env=env,
    )
    outputs = []
    try:

        def running() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            return status_file.exists() and json.loads(status_file.read_text())["leader"]

        wait_until(running, timeout=30)
        outputs.append(status_file.read_text())
        outputs.append(fetch(f"http://127.0.0.1:{port}/metrics"))
        outputs.append(fetch(f"http://127.0.0.1:{port}/healthz"))
        for extra in ([], ["--json"]):
            result = run_cli("status", *where, *extra, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            outputs += [result.stdout, result.stderr]
    finally:
        outputs.append(stop_cli(proc))
    output = "\n".join(outputs)
    assert "secret-test" in output and "Traceback" not in output, output
    return output


# -- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A server of our own: the test creates roles with such passwords."""
    import psycopg
    from psycopg import sql

    server = PostgresServer()
    with psycopg.connect(
        host=str(server.directory), port=server.port, user="postgres", autocommit=True
    ) as conn:
        for role, password in (("sec", SECRET), ("raw", RAW_SECRET)):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
    yield server
    server.close()


def conninfo_quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.mark.parametrize(
    ("case", "log_format"),
    [
        ("url-encoded", "text"),
        ("url-encoded", "json"),
        ("COORDINATOR_URL", "text"),
        ("DATABASE_URL", "json"),
        ("PGPASSWORD", "text"),
        ("keywords", "text"),
        ("raw", "text"),
        ("raw", "json"),
        ("COORDINATOR_URL-raw", "json"),
    ],
)
def test_postgres_passwords_never_show(
    postgres: PostgresServer, tmp_path: Path, case: str, log_format: str
) -> None:
    host = f"127.0.0.1:{postgres.port}"
    encoded = f"postgresql://sec:{quote(SECRET, safe='')}@{host}/app?sslmode=disable"
    # libpq reads '#' and '?' in the user info as part of the password: it connects.
    raw = f"postgresql://raw:{RAW_SECRET}@{host}/app?sslmode=disable"
    keywords = (
        f"host=127.0.0.1 port={postgres.port} user=sec dbname=app sslmode=disable "
        f"password={conninfo_quoted(SECRET)}"
    )
    url, env = {
        "url-encoded": (encoded, {}),
        "COORDINATOR_URL": (None, {"COORDINATOR_URL": encoded}),
        "DATABASE_URL": (None, {"DATABASE_URL": encoded}),
        "PGPASSWORD": (f"postgresql://sec@{host}/app?sslmode=disable", {"PGPASSWORD": SECRET}),
        "keywords": (keywords, {}),
        "raw": (raw, {}),
        "COORDINATOR_URL-raw": (None, {"COORDINATOR_URL": raw}),
    }[case]
    output = every_output(tmp_path, "postgres", url, env, log_format)
    assert not leaks(output, SECRET, RAW_SECRET), output
    assert f"{postgres.port}" in output  # the address is still shown, without its password


def test_postgres_wrong_password_error_hides_both(postgres: PostgresServer) -> None:
    wrong = SECRET[::-1]
    url = f"postgresql://sec:{quote(wrong, safe='')}@127.0.0.1:{postgres.port}/app"
    result = run_cli("-b", "postgres", "--url", url, "--", "true", timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert not leaks(output, SECRET, wrong), output


# -- Redis ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=SECRET)
    yield server
    server.close()


@pytest.mark.parametrize(
    ("case", "log_format"),
    [("url", "text"), ("url", "json"), ("COORDINATOR_URL", "text"), ("REDIS_URL", "json")],
)
def test_redis_passwords_never_show(
    redis_server: RedisServer, tmp_path: Path, case: str, log_format: str
) -> None:
    url = f"redis://:{quote(SECRET, safe='')}@127.0.0.1:{redis_server.port}/0"
    variable = {"url": None, "COORDINATOR_URL": "COORDINATOR_URL", "REDIS_URL": "REDIS_URL"}[case]
    env = {variable: url} if variable else {}
    output = every_output(tmp_path, "redis", None if variable else url, env, log_format)
    assert not leaks(output, SECRET), output
    assert f"@127.0.0.1:{redis_server.port}" in output


# -- Errors that quote the address ----------------------------------------------------


OWN_VARIABLE = {"redis": "REDIS_URL", "postgres": "DATABASE_URL", "consul": "CONSUL_HTTP_ADDR"}


@pytest.mark.parametrize(
    ("backend", "scheme", "given"),
    [
        (backend, scheme, given)
        for backend, schemes in (
            ("redis", ("redis", "http")),
            ("postgres", ("postgresql", "redis")),
            ("consul", ("http", "redis")),
            ("file", ("http",)),
        )
        for scheme in schemes
        for given in ("--url", "COORDINATOR_URL", OWN_VARIABLE.get(backend))
        if given
    ],
)
def test_an_unparsable_address_is_one_line_without_the_password(
    backend: str, scheme: str, given: str
) -> None:
    """The password raw in the URL, so each client splits it its own way; whatever
    the outcome (a usage error, a refusal, an unreachable server), no piece shows."""
    url = f"{scheme}://user:{SECRET}@127.0.0.1:{free_port()}/0"
    args = ["-b", backend, "--wait-timeout", "1", "--ttl", "10"]
    env = {} if given == "--url" else {given: url}
    if given == "--url":
        args += ["--url", url]
    status = ["status", *args[:2], "--name", "x", "--timeout", "1"]
    if given == "--url":
        status += ["--url", url]
    for command in ([*args, "--", "true"], status):
        result = run_cli(*command, env=env, timeout=30)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert not leaks(output, SECRET), output


# -- Consul --------------------------------------------------------------------------


def test_consul_token_never_shows(tmp_path: Path) -> None:
    (tmp_path / "consul").mkdir()
    server = ConsulServer(tmp_path / "consul")
    try:
        host = f"127.0.0.1:{server.port}"
        for url, env in (
            (f"http://{host}", {"CONSUL_HTTP_TOKEN": SECRET}),
            (None, {"CONSUL_HTTP_ADDR": host, "CONSUL_HTTP_TOKEN": SECRET}),
            (f"http://user:{quote(SECRET, safe='')}@{host}", {}),
        ):
            output = every_output(tmp_path, "consul", url, env, "json")
            assert not leaks(output, SECRET), output
    finally:
        server.close()


# -- The redaction itself ------------------------------------------------------------


@pytest.fixture
def clean_registry() -> Iterator[None]:
    redact.reset()
    yield
    redact.reset()


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize("scheme", ["postgresql", "redis", "rediss", "http", "https"])
@pytest.mark.parametrize("form", ["raw", "encoded"])
def test_every_shape_of_a_url_is_redacted(scheme: str, form: str) -> None:
    password = SECRET if form == "raw" else quote(SECRET, safe="")
    url = f"{scheme}://user:{password}@127.0.0.1:5432/db"
    # Without registration, the shape alone hides everything up to the last '@'.
    assert redact.redact_url(url) == f"{scheme}://user:***@127.0.0.1:5432/db"
    redact.register_url(url)
    # Registered, the password is hidden in any text, whole or in pieces.
    for text in (
        f"error near {SECRET[5:20]!r}",
        f"bad value {password}",
        f'{{"where": "{url}"}}',
        f"{scheme}:// {password}",
    ):
        assert not leaks(redact.redact(text), SECRET), text


@pytest.mark.usefixtures("clean_registry")
def test_secret_parameters_and_variables() -> None:
    redact.register_environment(
        {"PGPASSWORD": "pg-" + SECRET, "CONSUL_HTTP_TOKEN": "tok-" + SECRET, "HOME": "/root"}
    )
    text = f"x pg-{SECRET} y tok-{SECRET} z /root"
    assert redact.redact(text) == "x *** y *** z /root"
    assert redact.redact("redis://h/0?password=abc&db=1") == "redis://h/0?password=***&db=1"
    assert redact.redact("host=h password='a b' port=1") == "host=h password=*** port=1"
    assert redact.redact("fencing token 17, since 3s") == "fencing token 17, since 3s"


@pytest.mark.usefixtures("clean_registry")
def test_a_raw_sentinel_password_with_reserved_characters_never_shows() -> None:
    """In the query, after the sentinels: the last '@' is inside the password, so the
    URL shape cannot hide what follows it; its value, read up to the next name=value
    pair, is registered whole."""
    url = f"redis+sentinel://:x@127.0.0.1:1/svc?sentinel_password={SECRET}&db=0"
    redact.register_url(url)
    for text in (f"contending on {url}", f"bad {SECRET}", f'{{"url": "{url}"}}'):
        assert not leaks(redact.redact(text), SECRET), redact.redact(text)


@pytest.mark.usefixtures("clean_registry")
def test_a_secret_that_is_not_utf8_registers() -> None:
    """A byte of the command line or environment that is not UTF-8 (a lone surrogate
    in Python) is hidden as it is, and in the percent-encoded form of that byte."""
    redact.register_url("redis://:pass\udcffword@h/0")
    assert redact.redact("a pass\udcffword b pass%FFword c") == "a *** b *** c"


@pytest.mark.usefixtures("clean_registry")
def test_a_misplaced_url_with_a_raw_query_password_is_hidden_by_its_shape() -> None:
    """Not registered (given to --backend, or as the command, by mistake): the shapes
    alone hide it, although its password's raw '@' is also the authority's last '@'."""
    url = f"redis+sentinel://:x@127.0.0.1:1/svc?sentinel_password={SECRET}"
    assert not leaks(redact.redact(f"unknown backend {url!r} (choose from file)"), SECRET)


@pytest.mark.usefixtures("clean_registry")
@pytest.mark.parametrize(
    "command",
    [
        ["celery", "beat", "-b", f"redis://:{SECRET}@h/0"],
        ["app", f"--db-password={SECRET}"],
        ["env", f"PGPASSWORD={SECRET}", "app"],
        ["app", "--password", SECRET],
        ["app", f"redis+sentinel://h/s?sentinel_password={SECRET}"],
    ],
)
def test_passwords_in_the_command_do_not_show_in_its_default_name(command: list[str]) -> None:
    """The default lock name is derived from the command's words, and every log line,
    `status` and the metrics show it: what is shaped like a password there is hidden,
    while the name (the lock key) stays the one every node and earlier versions derive."""
    name = default_name(tuple(command))
    redact.register_command(command)
    shown = redact.redact(f"contending for /run/coordinator/{name}.lock as {name}")
    assert not leaks(shown, SECRET) and redact.MASK in shown, shown
    assert name == default_name(tuple(command))


@pytest.mark.usefixtures("clean_registry")
def test_text_after_a_hidden_query_password_stays() -> None:
    """The quote and colon after a URL in an error line are the message's, not the
    password's: once the registered password is hidden, the shape stops there."""
    url = "redis+sentinel://:Tz4nR7xB@h:1/s?sentinel_password=Kq8vZ2mW"
    redact.register_url(url)
    assert redact.redact(f"malformed {url!r}: no service") == (
        "malformed 'redis+sentinel://:***@h:1/s?sentinel_password=***': no service"
    )
