"""TLS on all three servers, with certificates made by the test run: a supervisor runs
its child over verified TLS (client certificates included); a wrong CA or a host name
the certificate does not name ends the program at once with exit code 3 and one line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.certs import (
    WRONG_HOST,
    Pki,
    TlsConsulServer,
    TlsPostgresServer,
    TlsRedisServer,
    make_pki,
)
from tests.cluster import run_cli
from tests.servers import settled

KINDS = ["redis", "postgres", "consul"]


@dataclass
class Target:
    """How a supervisor reaches one TLS server: URL and environment."""

    kind: str
    url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ttl(self) -> str:
        return "10" if self.kind == "consul" else "3"

    def run(self, *args: str, timeout: float = 30.0) -> tuple[int, str, str, float]:
        start = time.monotonic()
        done = run_cli(
            "--backend", self.kind, "--url", self.url, "--ttl", self.ttl, "--grace", "1",
            *args, env=self.env, timeout=timeout,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr, time.monotonic() - start


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def servers(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer]]:
    made: dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer] = {}
    try:
        made["redis"] = TlsRedisServer(tmp_path_factory.mktemp("redis-tls"), pki)
        made["postgres"] = TlsPostgresServer(pki)
        made["consul"] = TlsConsulServer(tmp_path_factory.mktemp("consul-tls"), pki)
        # Younger servers make every acquisition wait the safety delay.
        settled(made["redis"])
        settled(made["postgres"])
        yield made
    finally:
        for server in made.values():
            server.close()


def target(
    servers: dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer],
    kind: str,
    host: str = "127.0.0.1",
    ca: Path | None = None,
) -> Target:
    server = servers[kind]
    if isinstance(server, TlsConsulServer):
        return Target(kind, f"https://{host}:{server.port}", server.env(ca))
    return Target(kind, server.url_for(host, ca or server.pki.ca))


def assert_refused_once(outcome: tuple[int, str, str, float], secret: str | None) -> None:
    code, stdout, stderr, took = outcome
    assert code == 3, (code, stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("coordinator: error: ")]
    assert len(errors) == 1, stderr
    assert "TLS certificate verification failed" in errors[0]
    assert " WARNING " not in stderr, f"retried: {stderr}"  # no "will keep trying"
    assert "Traceback" not in stderr and stdout == ""
    if secret:
        assert secret not in stderr
    assert took < 15, f"took {took:.1f}s: retried instead of failing at once"


@pytest.mark.parametrize("kind", KINDS)
def test_supervisor_runs_its_child_over_verified_tls(
    servers: dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer], kind: str
) -> None:
    good = target(servers, kind)
    # A first use of a name waits the safety delay (a lock the store lost looks the same).
    code, stdout, stderr, _ = good.run(
        "--name", "tls-run", "--safety-delay", "0.5", "--", sys.executable, "-c", "print('ran')"
    )
    assert code == 0, stderr
    assert "ran" in stdout
    # status over the same TLS connection: the lock is free again after the release.
    status = run_cli(
        "status", "--backend", kind, "--url", good.url, "--name", "tls-run", env=good.env
    )
    assert status.returncode == 1, status.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_ca_fails_at_once_with_exit_3(
    servers: dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer], kind: str
) -> None:
    server = servers[kind]
    wrong = target(servers, kind, ca=server.pki.other_ca)
    secret = getattr(server, "PASSWORD", None)
    assert_refused_once(wrong.run("--name", "tls-ca", "--", "true"), secret)
    status = run_cli(
        "status", "--backend", kind, "--url", wrong.url, "--name", "tls-ca", env=wrong.env
    )
    assert status.returncode == 3, status.stderr
    assert "TLS certificate verification failed" in status.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_host_name_not_in_the_certificate_fails_at_once_with_exit_3(
    servers: dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer], kind: str
) -> None:
    wrong = target(servers, kind, host=WRONG_HOST)
    secret = getattr(servers[kind], "PASSWORD", None)
    assert_refused_once(wrong.run("--name", "tls-host", "--", "true"), secret)


def test_consul_without_a_client_certificate_fails_at_once_with_exit_3(
    servers: dict[str, TlsRedisServer | TlsPostgresServer | TlsConsulServer],
) -> None:
    server = servers["consul"]
    assert isinstance(server, TlsConsulServer)
    bare = Target("consul", server.url, server.env(client_cert=False))
    assert_refused_once(bare.run("--name", "tls-client", "--", "true"), None)
