from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.backends.base import Backend
from tests.servers import ConsulServer, PostgresServer, RedisServer, ServerProcess, settled
from tests.store import Store

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
        "COORDINATOR_TEST_REDIS_URL",
        lambda: settled(RedisServer(tmp_path_factory.mktemp("redis"))),
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    yield from server_url("COORDINATOR_TEST_POSTGRES_URL", lambda: settled(PostgresServer()))


@pytest.fixture(scope="session")
def consul_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from server_url(
        "COORDINATOR_TEST_CONSUL_URL", lambda: ConsulServer(tmp_path_factory.mktemp("consul"))
    )


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
