"""Consul: a session with a TTL, and a KV key acquired with that session.

- The session has a TTL (at least 10 s, Consul's minimum), no node health check by
  default (a gossip false positive must not drop the lock; --consul-node-check adds
  serfHealth), behavior "release", and a lock-delay equal to the safety delay: after a
  session is invalidated (TTL expiry, destroyed out of band, agent restart) Consul
  itself refuses the key to anyone for that long, time the old holder needs to notice
  at its next renewal and stop its child.
- Acquire reads the key (consistent), creates a session, then one transaction checks
  that the key is unchanged and locks it. Renew renews the session (404: lost) and
  checks that the key's Session is still ours (consistent read).
- Release unlocks the key, then destroys the session; unlocking does not trigger the
  lock-delay, so a standby blocked on the key takes over within milliseconds.
- Standbys wait in blocking queries on the key (index/wait), at most one per ttl.
- The key is never deleted. Its Flags hold a seed taken from the wall clock in ms
  when the key is created; the fencing token is seed + LockIndex, so it increases with
  every acquisition, and still increases if the key (or all of Consul's data) is lost.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import time
from typing import Any
from urllib.parse import urlsplit

import consul
import consul.callback
import consul.exceptions
import requests

from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.config import Config, redact_url
from coordinator.errors import BackendUnavailable, ConfigError, LeaseLost

MIN_TTL = 10.0  # Consul refuses session TTLs below 10 s
SESSION_TTL_MAX = 86400.0  # Consul refuses longer session TTLs (24 h)
FREE_POLL = 0.5  # a free key that cannot be locked is inside its lock-delay


class Conflict(BackendUnavailable):
    """A transaction was rolled back (HTTP 409): a definite no, not an outage."""


class ConsulBackend(Backend):
    name = "consul"

    def __init__(
        self,
        address: str,
        token: str | None,
        ttl: float,
        timeout: float,
        prefix: str,
        lock_delay: float,
        node_check: bool,
        node: str,
    ) -> None:
        try:  # an unclosed IPv6 bracket or a bad port raise ValueError
            parts = urlsplit(address)
            port = parts.port or (443 if parts.scheme == "https" else 8500)
        except ValueError as exc:
            raise ConfigError(f"malformed consul address {redact_url(address)!r}") from exc
        if not parts.hostname:
            raise ConfigError(f"malformed consul address {redact_url(address)!r}")
        self.where = redact_url(address)
        verify: bool | str = True
        if os.environ.get("CONSUL_CACERT"):
            verify = os.environ["CONSUL_CACERT"]
        if os.environ.get("CONSUL_HTTP_SSL_VERIFY", "").lower() == "false":
            verify = False
        cert = None
        if os.environ.get("CONSUL_CLIENT_CERT") and os.environ.get("CONSUL_CLIENT_KEY"):
            cert = (os.environ["CONSUL_CLIENT_CERT"], os.environ["CONSUL_CLIENT_KEY"])
        self.client = consul.Consul(
            host=parts.hostname,
            port=port,
            scheme=parts.scheme or "http",
            verify=verify,
            cert=cert,
            connections_timeout=timeout,
        )
        # The address's password part, then CONSUL_HTTP_TOKEN, is the ACL token.
        self.client.token = parts.password or token or None
        self.ttl, self.prefix, self.node = ttl, prefix, node
        self.lock_delay, self.node_check = lock_delay, node_check
        self._index: dict[str, int] = {}  # blocking-query index per key
        self._free_seen: set[str] = set()  # free keys we failed to lock (lock-delay)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def describe(self, name: str) -> str:
        return f"key {self.key(name)} on consul at {self.where}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (consul.ACLPermissionDenied, consul.exceptions.ClientError) as exc:
            text = " ".join(str(exc).split())[:200]
            # A transaction reports a denied ACL as a 409 with "Permission denied".
            if isinstance(exc, consul.ACLPermissionDenied) or "Permission denied" in text:
                # Standbys keep waiting: an operator can fix a policy without a restart.
                raise BackendUnavailable(
                    f"consul at {self.where} refused the ACL token (missing, wrong, or "
                    f"without key and session write on {self.prefix}): {text}"
                ) from exc
            if text.startswith("409"):
                raise Conflict(f"consul at {self.where}: {text}") from exc
            raise BackendUnavailable(f"consul at {self.where}: {text}") from exc
        except requests.exceptions.SSLError as exc:
            raise BackendUnavailable(f"consul at {self.where}: TLS error: {exc}") from exc
        except (consul.ConsulException, requests.RequestException, ValueError) as exc:
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise BackendUnavailable(f"consul at {self.where}: {text}") from exc

    def _read(self, name: str, **kwargs: Any) -> tuple[int, dict[str, Any] | None]:
        index, entry = self._call(
            self.client.kv.get, self.key(name), consistency="consistent", **kwargs
        )
        return int(index), entry

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        key = self.key(name)
        index, entry = self._read(name)
        self._index[name] = index
        if entry is not None and entry.get("Session"):
            return None
        seed = int(entry["Flags"]) if entry and entry.get("Flags") else time.time_ns() // 10**6
        sent = time.monotonic()
        checks = ["serfHealth"] if self.node_check else []
        session = self._call(
            self.client.session.create,
            name=f"coordinator {self.node}"[:128],
            checks=checks,
            lock_delay=self.lock_delay,
            behavior="release",
            ttl=math.ceil(self.ttl),
        )
        value = base64.b64encode(info.to_json().encode()).decode()
        check: dict[str, Any] = (
            {"Verb": "check-index", "Key": key, "Index": int(entry["ModifyIndex"])}
            if entry is not None
            else {"Verb": "check-not-exists", "Key": key}
        )
        lock = {"Verb": "lock", "Key": key, "Value": value, "Flags": seed, "Session": session}
        try:
            result = self._call(self._txn, [{"KV": check}, {"KV": lock}])
        except Conflict:
            # Rolled back: the key changed, or it is free but inside its lock-delay.
            self._destroy(session)
            self._free_seen.add(name)
            return None
        except BackendUnavailable:
            self._destroy(session)
            raise
        lock_index = int(result["Results"][-1]["KV"]["LockIndex"])
        # A missing key means first use of the name, or Consul lost its data.
        reset = "" if entry is not None else "consul had no record of this lock key"
        return Lease(name, session, seed + lock_index, sent + self.ttl, state_reset=reset)

    def _txn(self, operations: list[dict[str, Any]]) -> Any:
        # The client's own txn call sends no ACL token; send it here.
        headers = {"X-Consul-Token": self.client.token} if self.client.token else {}
        return self.client.http.put(
            consul.callback.CB.json(), "/v1/txn", data=json.dumps(operations), headers=headers
        )

    def _destroy(self, session: str) -> None:
        # On failure the session expires by itself within its TTL.
        with contextlib.suppress(BackendUnavailable):
            self._call(self.client.session.destroy, session)

    def renew(self, lease: Lease) -> Lease:
        sent = time.monotonic()
        try:
            self._call(self.client.session.renew, lease.token)
        except BackendUnavailable as exc:
            if isinstance(exc.__cause__, consul.NotFound):
                raise LeaseLost("consul invalidated our session") from exc
            raise
        _, entry = self._read(lease.name)
        if entry is None or entry.get("Session") != lease.token:
            raise LeaseLost(f"{self.key(lease.name)} is no longer held by our session")
        return Lease(lease.name, lease.token, lease.fencing_token, sent + self.ttl)

    def release(self, lease: Lease) -> None:
        holder = HolderInfo(node_id=self.node).to_json()
        self._call(self.client.kv.put, self.key(lease.name), holder, release=lease.token)
        self._destroy(lease.token)

    def holder(self, name: str) -> HolderInfo | None:
        _, entry = self._read(name)
        if entry is None or not entry.get("Session"):
            return None
        token = int(entry.get("Flags") or 0) + int(entry.get("LockIndex") or 0)
        return HolderInfo.from_json(entry.get("Value") or b"{}", fencing_token=token)

    def wait(self, name: str, timeout: float) -> None:
        """A blocking query on the key: returns when it changes or `timeout` passes."""
        last = self._index.get(name, 0)
        if name in self._free_seen or last <= 0 or timeout < 1:
            self._free_seen.discard(name)
            # A free key we could not lock is inside its lock-delay; nothing will
            # change on it to end a blocking query, so look again shortly.
            time.sleep(min(timeout, FREE_POLL))
            return
        index, _ = self._read(name, index=last, wait=f"{max(1, int(timeout))}s")
        # Consul: an index that goes backwards is a reset; start over from 0.
        self._index[name] = index if index >= last else 0

    def close(self) -> None:
        self.client.http.session.close()


def create(config: Config) -> Backend:
    if config.ttl < MIN_TTL:
        raise ConfigError(
            f"--ttl {config.ttl:g}s is below Consul's minimum session TTL of 10s: use --ttl 10 "
            "or more with the consul backend"
        )
    if math.ceil(config.ttl) > SESSION_TTL_MAX:
        raise ConfigError(
            f"--ttl must be at most {SESSION_TTL_MAX:g} seconds with the consul backend "
            f"(Consul's longest session TTL), got {config.ttl:g}"
        )
    check_key(config.key_prefix + config.name)
    address = config.url or os.environ.get("CONSUL_HTTP_ADDR") or "http://127.0.0.1:8500"
    if "://" not in address:
        scheme = "https" if os.environ.get("CONSUL_HTTP_SSL", "").lower() == "true" else "http"
        address = f"{scheme}://{address}"
    if not address.startswith(("http://", "https://")):
        raise ConfigError(
            f"consul address must be http(s)://host:port, got {redact_url(address)!r}"
        )
    return ConsulBackend(
        address,
        os.environ.get("CONSUL_HTTP_TOKEN"),
        config.ttl,
        config.call_timeout,
        config.key_prefix,
        config.effective_safety_delay,
        config.consul_node_check,
        config.node_id,
    )


def check_key(key: str) -> None:
    """Keys Consul's KV API takes as they are. The HTTP endpoint cleans the path
    (path.Clean) and refuses `..`, spaces at either end and escapes of them, while a
    transaction takes the key verbatim: a key that differs once cleaned would be
    locked under one name and read under another."""
    segments = key.split("/")
    if (
        key.startswith("/")
        or key != key.strip(" ")
        or "%" in key
        or any(segment in ("", ".", "..") for segment in segments)
    ):
        raise ConfigError(
            f"consul key {key!r} (--key-prefix + --name) must not start or end with '/' "
            "or a space, nor contain '//', '%', or a '.' or '..' segment"
        )
