"""The schedule's state in the backend: one small document per lock name, written only
with a fencing token at least as new as the newest the store has seen.

The document is {"fence": newest token, "entries": {entry: [last tick in us, runs]}}.
Each store offers a read and a compare-and-set write: the write succeeds only if the
document is still the version that was read and the token is not older than its
fence. Every decision (which tick is due, whether it was claimed) is made here and in
the scheduler, the same for every backend.
"""

from __future__ import annotations

import abc
import json
import os
from dataclasses import dataclass
from typing import Any, NoReturn

from coordinator.backends import create_backend
from coordinator.backends.base import Backend
from coordinator.config import Config
from coordinator.errors import BackendUnavailable, ConfigError

# A version that no store hands out: the document does not exist yet.
ABSENT = ""


@dataclass(frozen=True)
class EntryState:
    last_run_us: int  # the tick last claimed: its nominal time, microseconds since the epoch
    total_run_count: int


@dataclass(frozen=True)
class Snapshot:
    fence: int
    entries: dict[str, EntryState]
    version: str  # opaque; ABSENT when there is no document


class Fenced(Exception):
    """A holder with a newer fencing token has written the schedule: we lost the lease."""

    def __init__(self, newest: int) -> None:
        super().__init__(newest)
        self.newest = newest


class Conflict(Exception):
    """The document changed since it was read: read it again."""


def encode(fence: int, entries: dict[str, EntryState]) -> str:
    body = {n: [s.last_run_us, s.total_run_count] for n, s in sorted(entries.items())}
    return json.dumps({"fence": fence, "entries": body}, separators=(",", ":"))


def decode(text: str | bytes | None, version: str) -> Snapshot:
    if not text:
        return Snapshot(0, {}, version)
    try:
        data = json.loads(text)
        entries = {
            str(name): EntryState(int(value[0]), int(value[1]))
            for name, value in data.get("entries", {}).items()
        }
        return Snapshot(int(data.get("fence", 0)), entries, version)
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        # Never overwrite what we cannot read: it may hold a newer holder's fence.
        raise BackendUnavailable(f"the stored schedule state is not readable: {exc}") from exc


class Store(abc.ABC):
    def __init__(self, backend: Backend, name: str, prefix: str) -> None:
        self.backend, self.name, self.prefix = backend, name, prefix

    @abc.abstractmethod
    def read(self) -> Snapshot:
        """The document as it is now (ABSENT version and no entries if there is none)."""

    @abc.abstractmethod
    def write(self, token: int, entries: dict[str, EntryState], version: str) -> str:
        """Replace the document if it is still `version` and `token` is not older than
        its fence; returns the new version. Raises Fenced or Conflict otherwise."""

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the state lives, for logs (never with a password)."""

    def refuse(self, token: int) -> NoReturn:
        """After a failed compare-and-set: Fenced if the fence is newer, else Conflict."""
        fence = self.read().fence
        if fence > token:
            raise Fenced(fence)
        raise Conflict()

    def close(self) -> None:
        self.backend.close()


@dataclass(frozen=True)
class Settings:
    """What the supervisor tells its child (coordinator/supervisor.py, _child_env)."""

    backend: str
    url: str | None
    key_prefix: str
    name: str
    node_id: str
    token: int

    @classmethod
    def from_env(cls, environ: Any = None) -> Settings:
        env = os.environ if environ is None else environ
        missing = [
            var
            for var in ("COORDINATOR_BACKEND", "COORDINATOR_NAME", "COORDINATOR_FENCING_TOKEN")
            if not env.get(var)
        ]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} not set: coordinator.celery.Scheduler runs as the child of "
                "coordinator, e.g. coordinator --backend redis --name beat -- celery -A proj "
                "beat -S coordinator.celery.Scheduler"
            )
        try:
            token = int(env["COORDINATOR_FENCING_TOKEN"])
        except ValueError:
            raise ConfigError(
                f"COORDINATOR_FENCING_TOKEN is not a number: {env['COORDINATOR_FENCING_TOKEN']!r}"
            ) from None
        return cls(
            backend=env["COORDINATOR_BACKEND"],
            url=env.get("COORDINATOR_URL") or None,
            key_prefix=env.get("COORDINATOR_KEY_PREFIX", "coordinator/"),
            name=env["COORDINATOR_NAME"],
            node_id=env.get("COORDINATOR_NODE_ID", ""),
            token=token,
        )


def open_store(settings: Settings) -> Store:
    """The store for the supervisor's backend, connected the way the backend connects
    (same URL rules, environment defaults, TLS settings and timeouts)."""
    extra = {"node_id": settings.node_id} if settings.node_id else {}
    config = Config(
        command=("celery",),
        backend=settings.backend,
        url=settings.url,
        name=settings.name,
        key_prefix=settings.key_prefix,
        **extra,  # type: ignore[arg-type]
    )
    backend = create_backend(config)  # ConfigError, MissingDependency: one clear line
    if settings.backend == "redis":
        from coordinator.celery.redis_store import RedisStore

        return RedisStore(backend, settings.name, settings.key_prefix)
    if settings.backend == "postgres":
        from coordinator.celery.postgres_store import PostgresStore

        return PostgresStore(backend, settings.name, settings.key_prefix)
    if settings.backend == "consul":
        from coordinator.celery.consul_store import ConsulStore

        return ConsulStore(backend, settings.name, settings.key_prefix)
    if settings.backend == "file":
        from coordinator.celery.file_store import FileStore

        return FileStore(backend, settings.name, settings.key_prefix)
    raise ConfigError(f"no schedule store for backend {settings.backend!r}")  # pragma: no cover
