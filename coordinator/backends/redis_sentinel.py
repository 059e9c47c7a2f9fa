"""Redis behind Sentinel: redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]

The same keys and scripts as the plain Redis backend, on whichever server Sentinel
names as the primary of `service` (redis-py's Sentinel client finds it, and its pool
drops connections to a primary that was replaced). What replication adds:

- A lease counts only once a replica has it. Every acquisition and renewal is one
  pipeline, INFO replication + the script + WAIT 1, and the lock is counted on only if
  a replica acknowledged it within half a call timeout. Otherwise a new lease is held
  without starting the child (Lease.ready is False until a renewal reaches a replica),
  and a renewal of a running child's lease does not count (BackendUnavailable): with no
  replica for a whole ttl the child is stopped at the fencing point. So a replica that
  Sentinel promotes has the lock with an expiry no earlier than the holder's deadline,
  and no newcomer can take it there while the old child may run.
- A lease is bound to the server it was taken on: Sentinel's answer for the primary's
  address and that server's replication id (master_replid, new on every promotion) at
  acquisition. At every renewal Sentinel is asked again and the server reports its role
  and replication id in the same round trip as the renewal; a different primary, a role
  other than master or another replication id means the lease is lost.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import redis
from redis.connection import parse_url
from redis.sentinel import MasterNotFoundError, Sentinel

from coordinator.backends.base import HolderInfo, Lease
from coordinator.backends.redis import (
    RedisBackend,
    check_db,
    check_options,
    client_options,
    option_error,
)
from coordinator.errors import BackendRejected, BackendUnavailable, ConfigError, LeaseLost
from coordinator.redact import redact_url

log = logging.getLogger("coordinator")

DEFAULT_PORT = 26379
# Query options for the sentinels themselves; every other one is redis-py's, for the
# data nodes (and the TLS ones for both).
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
TLS_OPTIONS = re.compile(r"ssl_.*")

Address = tuple[str, int]


@dataclass(frozen=True)
class SentinelURL:
    sentinels: list[Address]
    service: str
    data_url: str  # redis[s]://userinfo@localhost/db?options, for redis-py's parser
    sentinel_auth: dict[str, str]
    tls: bool


def parse_sentinel_url(url: str) -> SentinelURL:
    """Split a Sentinel URL; ConfigError (one line, no password) on anything wrong."""
    shown = redact_url(url)

    def bad(why: str) -> ConfigError:
        return ConfigError(f"malformed redis sentinel URL {shown!r}: {why}")

    tls = url.startswith("rediss+")
    # Split by hand: a list of bracketed IPv6 sentinels is not one URL authority, and
    # some Python releases refuse it in urlsplit ("Invalid IPv6 URL"; Debian 12's 3.11.2).
    parts = _split(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [parse_host(item, bad) for item in hosts.split(",")] if hosts else []
    if not sentinels:
        raise bad("no sentinel given (host:port[,host:port...] before the service name)")
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if not path or not path[0]:
        raise bad("no service name (the primary's name in Sentinel) after the sentinels")
    if len(path) > 2 or (len(path) == 2 and not re.fullmatch(r"[0-9]+", path[1])):
        raise bad(f"the path must be /service or /service/<database number>, got {parts.path!r}")
    if len(path) == 2:
        check_db(path[1], shown)
    options: list[tuple[str, str]] = []
    sentinel_auth: dict[str, str] = {}
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise bad(f"the query is not name=value pairs: {exc}") from exc
    for name, value in query:
        if name in SENTINEL_OPTIONS:
            sentinel_auth[name.removeprefix("sentinel_")] = value
        else:
            options.append((name, value))
    db = path[1] if len(path) == 2 else "0"
    auth = f"{userinfo}@" if userinfo else ""
    scheme = "rediss" if tls else "redis"
    data_url = f"{scheme}://{auth}localhost/{db}" + (f"?{urlencode(options)}" if options else "")
    return SentinelURL(sentinels, path[0], data_url, sentinel_auth, tls)


@dataclass(frozen=True)
class _Parts:
    netloc: str
    path: str
    query: str


def _split(url: str) -> _Parts:
    """scheme://netloc/path?query#fragment, as urlsplit would, without judging the
    netloc: it ends at the first '/', '?' or '#'."""
    rest = url.partition("://")[2].partition("#")[0]
    netloc, rest = re.match(r"([^/?]*)(.*)", rest, re.S).groups()  # type: ignore[union-attr]
    path, _, query = rest.partition("?")
    return _Parts(netloc, path, query)


def parse_host(item: str, bad: Any) -> Address:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([0-9]*))?", item)
    if match is None:
        raise bad(f"sentinel {item!r} is not host or host:port")
    host, port = match.group(1).strip("[]"), match.group(2)
    number = int(port) if port else DEFAULT_PORT
    if not 0 < number < 65536:
        raise bad(f"sentinel {item!r}: port out of range")
    return host, number


def show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Binding:
    """The server a lease was taken on."""

    address: Address
    replid: str


class SentinelBackend(RedisBackend):
    def _connect(self, url: str, timeout: float) -> redis.Redis:
        spec = parse_sentinel_url(url)
        self.service = spec.service
        self.wait_ms = max(1, int(timeout * 500))  # half a call, leaving the rest for Sentinel
        try:
            kwargs = parse_url(spec.data_url)  # type: ignore[no-untyped-call]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"malformed redis sentinel URL {self.where!r}: {exc}") from exc
        for name in ("host", "port", "connection_class", "path"):
            kwargs.pop(name, None)
        kwargs.update(client_options(timeout))
        # A quarter of a call each: an unreachable sentinel leaves time to ask the next.
        sentinel_kwargs: dict[str, Any] = {
            k: v for k, v in client_options(timeout / 4).items() if k != "health_check_interval"
        }
        sentinel_kwargs.update(spec.sentinel_auth)
        if spec.tls:
            kwargs["ssl"] = True
            sentinel_kwargs["ssl"] = True
            sentinel_kwargs.update({k: v for k, v in kwargs.items() if TLS_OPTIONS.fullmatch(k)})
        try:
            self.sentinel = Sentinel(spec.sentinels, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
            client: redis.Redis = self.sentinel.master_for(spec.service, **kwargs)  # type: ignore[no-untyped-call]
            check_options(client)
            for node in self.sentinel.sentinels:
                check_options(node)
        except (ValueError, TypeError, redis.RedisError) as exc:
            raise ConfigError(
                f"malformed redis sentinel URL {self.where!r}: {option_error(exc)}"
            ) from exc
        self._primary_seen: Address | None = None
        self._bound: dict[str, Binding] = {}  # by owner token
        return client

    def _primary(self) -> Address:
        """Sentinel's primary for the service now. When it changed, the pool has dropped
        its idle connections to the old one; the release channel is subscribed anew."""
        pool = self.client.connection_pool
        try:
            found = pool.get_master_address()  # type: ignore[attr-defined]
        except MasterNotFoundError as exc:
            raise self._no_primary() from exc
        except redis.RedisError as exc:
            raise self._translate(exc) from exc
        address = (str(found[0]), int(found[1]))
        if address != self._primary_seen:
            if self._primary_seen is not None:
                self._drop_pubsub()
            self._primary_seen = address
        return address

    def _no_primary(self) -> Exception:
        """Why no sentinel named a primary. redis-py keeps only the errors' names, so
        each sentinel is asked once more: a certificate or a password that one refuses
        stays refused (BackendRejected); anything else may pass."""
        for node in self.sentinel.sentinels:
            try:
                node.ping()
            except redis.RedisError as exc:
                if isinstance(reason := self._translate(exc), BackendRejected):
                    return reason
        return BackendUnavailable(
            f"redis at {self.where}: no sentinel names a primary of {self.service!r} that is "
            "up (the sentinels are unreachable, or the primary is down and not yet replaced)"
        )

    def _replicated(
        self,
        script: Any,
        keys: Sequence[str],
        args: Sequence[Any],
        demoted: type[Exception],
        address: Address | None = None,
    ) -> tuple[Binding, Any, int]:
        """One round trip: INFO replication, the script, WAIT 1. Returns the server's
        binding, the script's result and how many replicas acknowledged. A server that
        is not a primary raises `demoted`, before any error of the script or of WAIT
        (both fail on a replica). `address`: Sentinel's answer, if just asked."""
        address = address or self._primary()
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            pipe.info("replication")
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", 1, self.wait_ms)  # type: ignore[no-untyped-call]
            try:
                info, result, acked = pipe.execute(raise_on_error=False)
            except redis.ConnectionError as exc:
                if "now a slave" in str(exc):  # redis-py's word for READONLY from a primary
                    raise demoted(f"the primary {show(address)} was demoted to a replica") from exc
                raise self._translate(exc) from exc
            except redis.RedisError as exc:
                raise self._translate(exc) from exc
            if isinstance(info, Exception):
                raise self._translate(info) from info
            if info.get("role") != "master":
                raise demoted(
                    f"the server at {show(address)} is a {info.get('role')}, not the primary"
                )
            if isinstance(result, redis.exceptions.NoScriptError) and attempt == 1:
                self._call(self.client.script_load, script.script)
                continue
            for answer in (result, acked):
                if isinstance(answer, Exception):
                    raise self._translate(answer) from answer
            return Binding(address, str(info.get("master_replid", ""))), result, int(acked)
        raise AssertionError("unreachable")

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        key, state, _ = self._keys(name)
        token = self._new_token()
        sent = time.monotonic()
        binding, (won, value, reset, uptime), acked = self._replicated(
            self._acquire, [key, state], [token, self.ttl_ms, info.to_json()], BackendUnavailable
        )
        if not won:
            self._refused(name, sent, int(value), reset)
            return None
        self._bound[token] = binding
        if not acked:
            log.warning(
                "acquired %s on the primary %s, but no replica acknowledged it within %gs: "
                "the child starts once one does (a failover could lose the lock meanwhile)",
                key,
                show(binding.address),
                self.wait_ms / 1000,
            )
        return self._lease(name, token, int(value), sent, int(reset), uptime, ready=acked > 0)

    def renew(self, lease: Lease) -> Lease:
        key, state, _ = self._keys(lease.name)
        sent = time.monotonic()
        bound = self._bound.get(lease.token)
        if bound is None:
            raise LeaseLost(f"{key} was not acquired through this connection")
        address = self._primary()
        if address != bound.address:
            raise LeaseLost(
                f"Sentinel now names {show(address)} as the primary of {self.service!r}, not "
                f"{show(bound.address)} where the lease was taken (a failover)"
            )
        now, renewed, acked = self._replicated(
            self._renew, [key, state], [lease.token, self.ttl_ms], LeaseLost, address
        )
        if now != bound:
            raise LeaseLost(
                f"the server at {show(now.address)} is no longer the primary the lease was "
                f"taken on at {show(bound.address)} (its replication id changed: a failover "
                "or a restart)"
            )
        if not renewed:
            raise LeaseLost(f"{key} is gone or held by someone else")
        if lease.ready and not acked:
            raise BackendUnavailable(
                f"no replica acknowledged the renewal within {self.wait_ms / 1000:g}s, so it "
                "does not count (a failover now could lose it)"
            )
        return Lease(lease.name, lease.token, lease.fencing_token, sent + self.ttl, ready=acked > 0)

    def write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Only once a replica has it: a failover must not take it back."""
        _, result, acked = self._replicated(script, keys, args, BackendUnavailable)
        if not acked:
            raise BackendUnavailable(
                f"no replica acknowledged the write within {self.wait_ms / 1000:g}s (it may "
                "have reached the primary only)"
            )
        return result

    def release(self, lease: Lease) -> None:
        self._primary()
        self._bound.pop(lease.token, None)
        super().release(lease)

    def forget(self, lease: Lease) -> None:
        self._bound.pop(lease.token, None)

    def holder(self, name: str) -> HolderInfo | None:
        self._primary()
        return super().holder(name)

    def wait(self, name: str, timeout: float) -> None:
        self._primary()
        super().wait(name, timeout)

    def close(self) -> None:
        super().close()
        self.sentinel.close()
