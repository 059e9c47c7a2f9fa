"""The servers the benchmarks run against, started with tests/servers.py on free ports
of this machine, with limits raised for hundreds of clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests import servers


class Unavailable(Exception):
    """The server program is missing; the message says which."""


def with_port(url: str, port: int) -> str:
    """The same URL pointing at another port of the same host (a proxy)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit(":", 1)[0] if parts.port else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def _wrapper(directory: Path, binary: str, extra: list[str], owner: str | None) -> str:
    """A script that runs `binary` with the caller's arguments plus `extra`: the
    tests' servers take no extra settings, and a later option wins."""
    path = directory / f"{Path(binary).name}-bench"
    quoted = " ".join(f"'{arg}'" for arg in extra)
    path.write_text(f'#!/bin/sh\nexec "{binary}" "$@" {quoted}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if owner:
        shutil.chown(path, owner, owner)
    return str(path)


class BenchPostgres(servers.PostgresServer):
    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        super().__init__()

    def start(self) -> None:
        if not self.postgres.endswith("-bench"):
            extra = ["-c", f"max_connections={self.max_connections}"]
            self.postgres = _wrapper(self.directory, self.postgres, extra, self.run_as)
        super().start()


class BenchConsul(servers.ConsulServer):
    def __init__(self, directory: Path, max_conns: int) -> None:
        self.max_conns = max_conns
        super().__init__(directory)

    def start(self) -> None:
        if not self.binary.endswith("-bench"):
            self.real_binary = self.binary
            extra = ["-hcl", f"limits {{ http_max_conns_per_client = {self.max_conns} }}"]
            self.binary = _wrapper(self.directory, self.binary, extra, None)
        super().start()


@dataclass
class Server:
    """One backend as the benchmarks use it. `url` may hold a password: never print it."""

    kind: str
    url: str
    ttl: float
    version: str
    pid: int | None = None  # the server process, for its CPU time
    port: int | None = None
    close: Callable[[], None] = field(default=lambda: None)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "unknown"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def _guard(make: Callable[[], servers.ServerProcess]) -> servers.ServerProcess:
    """Build a server; the tests' "missing program" skip becomes Unavailable."""
    try:
        return make()
    except BaseException as exc:
        if type(exc).__name__ in ("Skipped", "Failed"):
            raise Unavailable(str(exc)) from None
        raise


def start(kind: str, ttl: float, work: Path, clients: int) -> Server:
    """Start a server for `kind` able to serve `clients` supervisors."""
    work.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        lock_dir = Path(tempfile.mkdtemp(prefix="locks-", dir=work))
        return Server(kind, str(lock_dir), ttl, "flock(2) on local files (no server)")
    if kind == "redis":
        (work / "redis").mkdir(exist_ok=True)
        # A server younger than the ttl makes every newcomer wait the safety delay.
        redis = _guard(lambda: servers.settled(servers.RedisServer(work / "redis"), ttl + 0.5))
        assert isinstance(redis, servers.RedisServer) and redis.process is not None
        words = _version([redis.binary, "--version"]).split()
        version = " ".join(w.removeprefix("v=") for w in words[:3] if w != "server")
        return Server(kind, redis.url, ttl, version, redis.process.pid, redis.port, redis.close)
    if kind == "postgres":
        pg = _guard(
            lambda: servers.settled(
                BenchPostgres(max_connections=max(300, clients * 2 + 50)), ttl + 0.5
            )
        )
        assert isinstance(pg, BenchPostgres) and pg.process is not None
        try:
            version = str(pg.sql("SELECT version()")[0][0])
        except BaseException:
            pg.close()
            raise
        short = " ".join(version.split()[:2])
        return Server(kind, pg.url, ttl, short, pg.process.pid, pg.port, pg.close)
    if kind == "consul":
        directory = work / "consul"
        directory.mkdir(exist_ok=True)
        consul = _guard(lambda: BenchConsul(directory, max_conns=max(200, clients * 2 + 100)))
        assert isinstance(consul, BenchConsul) and consul.process is not None
        version = _version([consul.real_binary, "version"]) + " (dev agent)"
        return Server(kind, consul.url, ttl, version, consul.process.pid, consul.port, consul.close)
    raise ValueError(f"unknown backend {kind!r}")


def stop(server: Server) -> None:
    with contextlib.suppress(Exception):
        server.close()
    if server.kind == "file":
        shutil.rmtree(server.url, ignore_errors=True)


def supported() -> dict[str, str]:
    """What is missing for each server backend, or "" when it can run."""
    missing = {"file": "", "redis": "", "postgres": "", "consul": ""}
    if shutil.which("redis-server") is None:
        missing["redis"] = "redis-server is not installed"
    if servers.postgres_bin("initdb") is None or servers.postgres_bin("postgres") is None:
        missing["postgres"] = "PostgreSQL (initdb, postgres) is not installed"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            missing["postgres"] = "running as root needs a `postgres` user for PostgreSQL"
    return missing
