"""One backend kind as the tests see it: its URL, its settings, out-of-band access."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.backends import create_backend
from coordinator.backends.base import Backend
from coordinator.config import Config


class Store:
    """One backend kind as the tests see it: its URL, and out-of-band access."""

    def __init__(self, kind: str, url: str, prefix: str) -> None:
        self.kind, self.url, self.prefix = kind, url, prefix

    @property
    def ttl(self) -> float:
        """A short ttl for quick tests; Consul's at which its failover targets are set."""
        return 5.0 if self.kind == "consul" else 3.0

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

    def end_sessions(self, node_id: str) -> int:
        """PostgreSQL: pg_terminate_backend on every session of one supervisor, found by
        the node id in their application_name; returns how many were ended."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name ~ '^coordinator [^ ]+ ' AND"
                " substring(application_name from '^coordinator [^ ]+ (.*)$') = %s",
                (node_id,),
            ).fetchone()
        return int(row[0]) if row else 0

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
