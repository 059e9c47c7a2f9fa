from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.backends import create_backend
from coordinator.backends.base import Backend
from coordinator.config import Config
from tests.servers import RedisServer

BACKENDS = ["file", "redis"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("COORDINATOR_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


class Store:
    """One backend kind as the tests see it: its URL, and out-of-band access."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind, self.url, self.prefix = kind, url, prefix

    def config(self, name: str = "x", **kwargs: Any) -> Config:
        kwargs.setdefault("ttl", 3.0)
        kwargs.setdefault("grace", 1.0)
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
