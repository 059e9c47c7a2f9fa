from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.backends import create_backend
from coordinator.backends.base import Backend
from coordinator.config import Config
from tests.servers import ConsulServer, PostgresServer, RedisServer, ServerProcess

BACKENDS = ["file", "redis", "postgres", "consul"]


def server_url(variable: str, start: Callable[[], ServerProcess]) -> Iterator[str]:
    """The address in `variable`, else a server of our own for the whole session."""
    url = os.environ.get(variable)
    if url:
        yield url
        return
    server = start()
    yield server.url
    server.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from server_url(
        "COORDINATOR_TEST_REDIS_URL", lambda: RedisServer(tmp_path_factory.mktemp("redis"))
    )


def settled_postgres() -> PostgresServer:
    server = PostgresServer()
    try:
        # A server younger than a ttl makes every acquisition wait the safety delay
        # (locks do not survive a restart); the tests use a ttl of a few seconds.
        time.sleep(max(0.0, 4.0 - server.uptime()))
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    yield from server_url("COORDINATOR_TEST_POSTGRES_URL", settled_postgres)


@pytest.fixture(scope="session")
def consul_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from server_url(
        "COORDINATOR_TEST_CONSUL_URL", lambda: ConsulServer(tmp_path_factory.mktemp("consul"))
    )


class Store:
    """One backend kind as the tests see it: its URL, and out-of-band access."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind, self.url, self.prefix = kind, url, prefix

    @property
    def ttl(self) -> float:
        """The shortest ttl the backend accepts, or a short one for quick tests."""
        return 10.0 if self.kind == "consul" else 3.0

    def config(self, name: str = "x", **kwargs: Any) -> Config:
        kwargs.setdefault("ttl", self.ttl)
        kwargs.setdefault("grace", self.ttl / 3)
        return Config(
            command=("true",),
            backend=self.kind,
            url=self.url,
            name=name,
            key_prefix=self.prefix,
            **kwargs,
        )

    def backend(self, name: str = "x", **kwargs: Any) -> Backend:
        return create_backend(self.config(name, **kwargs))

    def cli_args(self) -> list[str]:
        return ["--backend", self.kind, "--url", self.url, "--key-prefix", self.prefix]

    def delete_lock(self, name: str) -> None:
        """Remove the lock behind the holder's back, as an operator or a restart would."""
        if self.kind == "file":
            (Path(self.url) / f"{name}.lock").unlink()
        elif self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.url)
            assert client.delete(f"{self.prefix}{{{name}}}") == 1
            client.close()
        elif self.kind == "postgres":
            import psycopg

            from coordinator.backends.postgres import key_parts, lock_key

            with psycopg.connect(self.url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND objsubid = 1 AND granted AND classid::int8 = %(hi)s"
                    " AND objid::int8 = %(lo)s",
                    key_parts(lock_key(f"{self.prefix}{name}")),
                ).fetchone()
                assert row is not None and row[0], "no session held the lock"
        elif self.kind == "consul":
            from urllib.parse import urlsplit

            import consul

            parts = urlsplit(self.url)
            client = consul.Consul(host=parts.hostname, port=parts.port or 8500)
            _, entry = client.kv.get(f"{self.prefix}{name}")
            assert entry is not None and entry.get("Session"), "no session held the lock"
            client.session.destroy(entry["Session"])
        else:
            raise AssertionError(self.kind)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    kind = request.param
    prefix = f"test-{uuid.uuid4().hex[:8]}/"
    if kind == "file":
        return Store(kind, str(tmp_path / "locks"), prefix)
    url = request.getfixturevalue(f"{kind}_url")
    return Store(kind, url, prefix)


@pytest.fixture
def make_backend(store: Store) -> Iterator[Callable[..., Backend]]:
    made: list[Backend] = []

    def make(name: str = "x", **kwargs: Any) -> Backend:
        backend = store.backend(name, **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
