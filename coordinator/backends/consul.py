"""Consul: a KV key locked by a session tied to a TTL check of the holder's own.

- The holder registers a TTL check on the agent it talks to (TTL = the ttl) and passes
  it at every renewal: one request. Its session names that check (and serfHealth with
  --consul-node-check), so the agent invalidates the session as soon as the check
  turns critical, a ttl after the last pass: no 10 s floor, no doubling. A long session
  TTL (BACKSTOP_TTLS x ttl) is the backstop for an agent that died with its node.
- The holder keeps a blocking query open on its own key (watch_fd): a session
  destroyed or a key deleted out of band ends it at once, the supervisor renews at
  once and learns the lease is lost. So the lock-delay only covers the holder's own
  stop: call timeout + grace + margin (docs/safety.md derives it).
- A standby keeps a ready session, tied to a check of its own with a long TTL
  (STANDBY_TTLS x ttl), and one blocking query open. Standbys stand in a line
  (consul_line): the first few wait on the key, the others each on a line key ahead,
  so a release wakes only a few. Every STANDBY_PASS ttls a standby passes the check;
  a head sends its query again then, one further back every LOOK_TTLS ttls, after
  looking at the line: under one request per ttl.
- Acquire: one transaction checks that the key is unchanged (or absent) and locks it
  with the ready session, then the check is registered again with the ttl, and the
  winner leaves the line. A standby that loses the race keeps its session (no
  create/destroy storm) and reads the key again (after a pause, out of step with the
  others, if it had no place in the line and so woke with all of them).
- Release unlocks the key (no lock-delay) and removes the check, which ends the
  session.
- Fencing token: Flags + the Raft index of the write that locked the key. Flags is a
  base (OFFSET, above the wall-clock tokens of earlier versions) kept across
  releases; the Raft index only grows, whoever writes, whatever the clocks say. If
  Consul lost its data (the index starts again), a node that saw a higher token
  raises the base to it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import re
import select
import ssl
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import consul
import requests

from coordinator.backends import tls
from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.backends.consul_line import LOOK_TTLS, Line, Look
from coordinator.config import Config, redact_url
from coordinator.errors import BackendRejected, BackendUnavailable, ConfigError, LeaseLost

# Below this the call timeout (ttl/6) leaves too little room for one HTTP round trip on
# a loaded host, and the check would flap.
MIN_TTL = 2.0
# Tokens are OFFSET + a Raft index: above every wall-clock-millisecond token (about
# 1.8e12 in 2026) that earlier versions handed out, until 2039.
OFFSET = 2**41
# The session's own TTL, in ttls: only a backstop for an agent that died with its node
# (the check cannot turn critical then). Renewed every third of it.
BACKSTOP_TTLS = 30
# The holder's blocking query on its own key is sent again this often when nothing
# changes (Consul caps a wait at 10 minutes).
WATCH_WAIT = 300.0
# A free key that cannot be locked is inside its lock-delay: look again this often.
FREE_POLL = 0.25
# After losing a race for a released key, a standby with no place in the line (woken
# with all the others) pauses this long (in ttls, with jitter) before it reads the key
# again; a head of the line reads it at once.
LOST_RACE_PAUSE = 0.2
# A standby's check: its TTL, and how often the standby passes it and sends its
# blocking query again, in ttls. A pass is due after STANDBY_PASS ttls and forced
# after STANDBY_PASS + 0.5 even with the query still open; the standby looks at least
# once a ttl (plus a call timeout), so the check is passed by 4.5 ttls at the latest.
STANDBY_TTLS = 5.0
STANDBY_PASS = 3.0
# The servers do not know our check yet, or still know it as critical.
CHECK_NOT_SYNCED = re.compile(r"Missing check|in critical state")
SESSION_TTL_MAX = 86400.0  # Consul refuses longer session TTLs (24 h)
LOCK_DELAY_MAX = 60.0  # Consul silently shortens a longer lock-delay to this


class Conflict(BackendUnavailable):
    """A transaction was rolled back (HTTP 409): a definite no, not an outage."""


@dataclass
class Reply:
    code: int
    headers: Mapping[str, str]
    body: str

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError as exc:
            raise BackendUnavailable(f"consul sent malformed JSON: {self.body[:100]!r}") from exc


def one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def token_of(entry: Mapping[str, Any]) -> int:
    """The fencing token of a locked entry: its base plus the index of its lock."""
    return int(entry.get("Flags") or 0) + int(entry.get("ModifyIndex") or 0)


class Watch:
    """A blocking query on the holder's key, sent on a socket of its own and read only
    once the socket turns readable (the key changed, or the wait ended)."""

    def __init__(self, conn: http.client.HTTPConnection, wait: float, line: bool = False) -> None:
        self.conn, self.sent, self.wait = conn, time.monotonic(), wait
        self.line = line  # on a line key ahead, not on the lock key
        assert conn.sock is not None
        self.fd: int = conn.sock.fileno()

    def ready(self, timeout: float = 0.0) -> bool:
        try:
            return bool(select.select([self.fd], [], [], timeout)[0])
        except (OSError, ValueError):
            return True

    def overdue(self) -> bool:
        """Consul answers by wait + wait/16; much later means a dead connection."""
        return time.monotonic() > self.sent + self.wait * 1.1 + 5

    def result(self) -> tuple[int, int, Any]:
        """(status, X-Consul-Index, body) of the answer; raises OSError on a broken one."""
        response = self.conn.getresponse()
        body = response.read().decode(errors="replace")
        index = int(response.headers.get("X-Consul-Index") or 0)
        data = json.loads(body) if response.status == 200 and body else None
        return response.status, index, data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


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
            port = parts.port if parts.port is not None else DEFAULT_PORTS.get(parts.scheme, 8500)
        except ValueError as exc:
            raise ConfigError(f"malformed consul address {redact_url(address)!r}") from exc
        if not parts.hostname or port == 0:  # port 0 is no agent's: nothing to wait for
            raise ConfigError(f"malformed consul address {redact_url(address)!r}")
        self.where = redact_url(address)
        self.host, self.port, self.scheme = parts.hostname, port, parts.scheme or "http"
        verify: bool | str = True
        if os.environ.get("CONSUL_CACERT"):
            verify = os.environ["CONSUL_CACERT"]
        if os.environ.get("CONSUL_HTTP_SSL_VERIFY", "").lower() == "false":
            verify = False
        cert = None
        if os.environ.get("CONSUL_CLIENT_CERT") and os.environ.get("CONSUL_CLIENT_KEY"):
            cert = (os.environ["CONSUL_CLIENT_CERT"], os.environ["CONSUL_CLIENT_KEY"])
        check_tls_files(verify, cert)
        self.verify, self.cert = verify, cert
        self.client = consul.Consul(
            host=self.host,
            port=port,
            scheme=self.scheme,
            verify=verify,
            cert=cert,
            connections_timeout=timeout,
        )
        # The address's password part, then CONSUL_HTTP_TOKEN, is the ACL token.
        self.token = parts.password or token or None
        if self.token is not None and not TOKEN.fullmatch(self.token):
            # It goes in a header: a space or control character would fail every
            # request alike, which waiting cannot fix.
            raise ConfigError(
                "the consul ACL token (CONSUL_HTTP_TOKEN, or the address's password) "
                "must be printable ASCII without spaces"
            )
        self.ttl, self.timeout, self.prefix, self.node = ttl, timeout, prefix, node
        self.lock_delay, self.node_check = lock_delay, node_check
        self.backstop = max(10.0, BACKSTOP_TTLS * ttl)
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}  # blocking-query index per key
        self._read_at: dict[str, tuple[float, int, dict[str, Any] | None]] = {}
        self._known: dict[str, dict[str, Any] | None] = {}  # the entry at _index
        self._free_seen: set[str] = set()  # free keys we failed to lock (lock-delay)
        self._lost_race: set[str] = set()  # the key changed under our transaction
        self._named: set[str] = set()  # names whose holder refused_by() has told
        self._seen: dict[str, int] = {}  # the highest token seen or handed out, per name
        self._checks: set[str] = set()  # checks registered by this process
        self._passed: dict[str, float] = {}  # check -> when its last pass was sent
        self._check_ttl: dict[str, float] = {}  # check -> the TTL it was registered with
        self._cleaned = False
        self._instance = uuid.uuid4().hex[:12]
        self._ready: dict[str, str] = {}  # name -> a standby's ready session
        self._standby_watch: dict[str, Watch] = {}  # name -> a standby's blocking query
        # check -> the registration with the ttl sent at acquisition, and when
        self._shortening: dict[str, tuple[http.client.HTTPConnection, float]] = {}
        self._base: dict[str, int] = {}  # session -> the Flags its lock wrote
        self._renewed: dict[str, float] = {}  # session -> last session renewal
        self._watch: dict[str, Watch] = {}  # session -> its watch
        self._refused_by: dict[str, dict[str, Any]] = {}  # name -> the entry that said no
        self._lines: dict[str, Line] = {}  # name -> our place in its line of standbys

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def describe(self, name: str) -> str:
        return f"key {self.key(name)} on consul at {self.where}"

    def _line(self, name: str) -> Line:
        if name not in self._lines:
            value = HolderInfo(node_id=self.node).to_json()
            self._lines[name] = Line(self._http, self._send, self.key(name), value)
        return self._lines[name]

    # -- HTTP ---------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    def _http(
        self,
        method: str,
        path: str,
        params: list[tuple[str, Any]] | None = None,
        body: str = "",
    ) -> Reply:
        """One request. Answers that waiting can change (no connection, timeouts,
        5xx, 429) are BackendUnavailable; a request the server refuses as malformed
        (400) is ConfigError; a refused ACL token is BackendRejected. 404 and 409
        are returned to the caller, whose meaning they depend on."""

        def keep(response: Any) -> Reply:
            return Reply(int(response.code), response.headers, str(response.body))

        http = self.client.http
        try:
            if method == "GET":
                reply: Reply = http.get(keep, path, params=params, headers=self._headers())
            elif method == "DELETE":
                reply = http.delete(keep, path, params=params, headers=self._headers())
            else:
                reply = http.put(keep, path, params=params, data=body, headers=self._headers())
        except requests.exceptions.SSLError as exc:
            if tls.verification_failed(exc):
                text = " ".join(str(exc).split())[:300]
                raise BackendRejected(tls.describe("consul", self.where, text)) from exc
            raise BackendUnavailable(f"consul at {self.where}: TLS error: {exc}") from exc
        except (requests.RequestException, ValueError) as exc:
            text = one_line(str(exc), 300) or type(exc).__name__
            raise BackendUnavailable(f"consul at {self.where}: {text}") from exc
        text = one_line(reply.body)
        if reply.code in (401, 403) or (reply.code == 409 and "Permission denied" in text):
            raise BackendRejected(
                f"consul at {self.where} refused the ACL token (missing, wrong, or without "
                f"key write on {self.prefix}, session write, service write on coordinator): "
                f"{reply.code} {text}"
            )
        if reply.code == 400 or "invalid key name" in text:
            raise ConfigError(f"consul at {self.where} refused the request: {text}")
        if reply.code not in (200, 404, 409):  # 5xx, 429: an outage, no leader, overload
            raise BackendUnavailable(f"consul at {self.where}: {reply.code} {text}")
        return reply

    def _read(self, name: str, **params: Any) -> tuple[int, dict[str, Any] | None]:
        """The key's entry (None when absent) and the index to block on."""
        query = [("consistent", "")] if not params else list(params.items())
        reply = self._http("GET", f"/v1/kv/{self.key(name)}", query)
        index = int(reply.headers.get("X-Consul-Index") or 0)
        if reply.code == 404:
            return index, None
        data = reply.json()
        entry = data[0] if isinstance(data, list) and data else None
        if entry is not None and entry.get("Session"):
            self._seen[name] = max(self._seen.get(name, 0), token_of(entry))
        return index, entry

    # -- the check and the session ---------------------------------------------------

    def check_id(self, name: str) -> str:
        """This process's check for `name`: never shared, even by two supervisors given
        the same --node-id on one host."""
        digest = hashlib.sha256(self.key(name).encode()).hexdigest()[:12]
        return f"coordinator-{digest}-{self._instance}"

    def _clean_checks(self) -> None:
        """Once per process: remove this program's checks left critical on the agent
        (crashed or killed supervisors), so a crash-looping node leaves few behind."""
        if self._cleaned:
            return
        self._cleaned = True
        with contextlib.suppress(BackendUnavailable, ConfigError):
            reply = self._http("GET", "/v1/agent/checks")
            checks = reply.json() if reply.code == 200 else {}
            for check_id, check in (checks or {}).items():
                if check_id.startswith("coordinator-") and check.get("Status") == "critical":
                    self._unregister(check_id, str(check.get("ServiceID") or ""))

    def _unregister(self, check_id: str, service_id: str) -> None:
        """Remove a check: with its service (the service goes with its checks), or alone
        (checks of earlier versions were node checks)."""
        if service_id:
            self._http("PUT", f"/v1/agent/service/deregister/{service_id}")
        else:
            self._http("PUT", f"/v1/agent/check/deregister/{check_id}")

    def _register_check(self, name: str, ttl: float) -> str:
        """Register our service and its TTL check (passing) with `ttl`. Registering
        again with another TTL keeps the check's status and restarts its timer: the
        session tied to it lives on."""
        sent = time.monotonic()
        self._http("PUT", "/v1/agent/service/register", body=json.dumps(self._service(name, ttl)))
        check_id = self.check_id(name)
        self._checks.add(check_id)
        self._passed[check_id] = sent
        self._check_ttl[check_id] = ttl
        return check_id

    def _service(self, name: str, ttl: float) -> dict[str, Any]:
        check_id = self.check_id(name)
        # The check belongs to a service of its own: a node check left critical (by a
        # standby that stopped passing it, or a killed supervisor) would take every
        # service of the node out of `?passing` health queries and DNS.
        return {
            "ID": check_id,
            "Name": "coordinator",
            "Meta": {"lock": one_line(self.key(name), 500), "node_id": one_line(self.node, 500)},
            "Check": {
                "CheckID": check_id,
                "Name": one_line(f"coordinator {self.node} {self.key(name)}", 200),
                "Notes": "held by a coordinator supervisor; it passes this at each renewal",
                "TTL": f"{int(ttl * 1000)}ms",
                "Status": "passing",
            },
        }

    def _pass(self, check_id: str) -> bool:
        """Pass our check; False if the agent no longer has it (restarted without its
        state, or an operator removed it), which invalidated the session."""
        sent = time.monotonic()
        if self._http_renewal("PUT", f"/v1/agent/check/pass/{check_id}").code == 404:
            self._checks.discard(check_id)
            return False
        self._passed[check_id] = sent
        return True

    def _check_ends(self, check_id: str) -> float:
        """The earliest moment our check can turn critical, by our own clock."""
        return self._passed.get(check_id, 0.0) + self._check_ttl.get(check_id, 0.0)

    def _create_session(self, name: str) -> str:
        """A standby's ready session: tied to a fresh check with the standby's long TTL
        (an acquisition shortens it to the ttl)."""
        check_id = self.check_id(name)
        if check_id in self._checks:
            # A check left from an earlier lease may be critical, and registering
            # again would keep that status: start afresh.
            self._deregister(name)
        check_id = self._register_check(name, STANDBY_TTLS * self.ttl)
        spec = {
            "Name": one_line(f"coordinator {self.node}", 128),
            # An empty list, not none: Consul's default is serfHealth.
            "NodeChecks": ["serfHealth"] if self.node_check else [],
            "ServiceChecks": [{"ID": check_id}],
            "LockDelay": f"{int(self.lock_delay * 1000)}ms",
            "Behavior": "release",
            "TTL": f"{int(self.backstop)}s",
        }
        end = time.monotonic() + self.timeout / 2
        pause = 0.01
        while True:
            try:
                reply = self._http("PUT", "/v1/session/create", body=json.dumps(spec))
            except BackendUnavailable as exc:
                # The agent copies a new or re-registered check to the servers' catalog
                # in the background; until then the session is refused. Milliseconds.
                if time.monotonic() > end or not CHECK_NOT_SYNCED.search(str(exc)):
                    raise
                # Many standbys may be waiting on the same agent: back off, out of step.
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(0.2, pause * 2)
                continue
            session = str(reply.json()["ID"])
            self._renewed[session] = time.monotonic()
            return session

    def _ready_session(self, name: str) -> str:
        """The standby's ready session while its check surely passes, else a new one."""
        session = self._ready.pop(name, None)
        check_id = self.check_id(name)
        now = time.monotonic()
        if (
            session is not None
            and self._check_ends(check_id) > now + self.timeout
            and now - self._renewed.get(session, 0.0) < self.backstop - self.timeout
        ):
            return session
        if session is not None:
            self._forget(session)  # its check or TTL ended it, or will
        return self._create_session(name)

    def _keep_ready(self, name: str, watching: bool) -> None:
        """A standby's upkeep, called at least once a ttl: pass its check every
        STANDBY_PASS ttls (with the blocking query's re-send, or alone when the query
        is still open past its time), renew the session every half backstop."""
        session = self._ready.get(name)
        if session is None:
            return
        check_id = self.check_id(name)
        now = time.monotonic()
        since = now - self._passed.get(check_id, 0.0)
        due = STANDBY_PASS * self.ttl
        late = due + 0.5 * self.ttl if watching else due - 0.5 * self.ttl
        if since >= late and not self._pass(check_id):
            self._forget(self._ready.pop(name))
            return
        if now - self._renewed.get(session, 0.0) > self.backstop / 2:
            if self._http_renewal("PUT", f"/v1/session/renew/{session}").code == 404:
                self._forget(self._ready.pop(name))
                return
            self._renewed[session] = now

    def _destroy(self, session: str) -> None:
        # On failure the session ends by itself once its check turns critical.
        self._forget(session)
        with contextlib.suppress(BackendUnavailable, BackendRejected, ConfigError):
            self._http("PUT", f"/v1/session/destroy/{session}")

    def _deregister(self, name: str) -> None:
        """Remove our check and its service: that also invalidates a session tied to it
        (without a lock-delay on keys it no longer holds)."""
        check_id = self.check_id(name)
        self._drop_shorten(check_id)
        if check_id in self._checks:
            with contextlib.suppress(BackendUnavailable, BackendRejected, ConfigError):
                self._unregister(check_id, check_id)
                self._checks.discard(check_id)

    # -- the contract -----------------------------------------------------------------

    def _current(self, name: str) -> tuple[int, dict[str, Any] | None]:
        """The key as a standby last saw it, when that is still true, else a read: what
        a blocking query returned moments ago, or what it was sent with while it is
        still open (the key has not changed since)."""
        at, index, entry = self._read_at.pop(name, (0.0, 0, None))
        if time.monotonic() - at <= 0.5:
            return index, entry
        watch = self._standby_watch.get(name)
        if watch is not None and name in self._known:
            # Waiting on a line key ahead: the key as the last look saw it.
            if watch.line or (not watch.ready() and not watch.overdue()):
                return self._index[name], self._known[name]
            if self._consume(name):
                return self._index[name], self._known[name]
        return self._read(name)

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        key = self.key(name)
        index, entry = self._current(name)
        self._index[name], self._known[name] = index, entry
        self._clean_checks()
        if entry is not None and entry.get("Session"):
            self._refused_by[name] = entry
            if name not in self._ready:
                # Standing by: make the session now, not when the key frees.
                self._ready[name] = self._ready_session(name)
            return None
        flags = int(entry.get("Flags") or 0) if entry else 0
        base = flags if flags >= OFFSET else OFFSET
        read_index = int(entry["ModifyIndex"]) if entry else index
        if base + read_index <= self._seen.get(name, 0):
            # Consul's index went back (it lost its data): stay above what we saw.
            base = self._seen[name]
        value = base64.b64encode(info.to_json().encode()).decode()
        check: dict[str, Any] = (
            {"Verb": "check-index", "Key": key, "Index": int(entry["ModifyIndex"])}
            if entry is not None
            else {"Verb": "check-not-exists", "Key": key}
        )
        check_id = self.check_id(name)
        for attempt in (1, 2):  # a second time with a new session if the agent lost ours
            session = self._ready_session(name)
            sent = time.monotonic()
            if self._check_ends(check_id) < sent + self.ttl + self.timeout and not self._pass(
                check_id
            ):
                self._forget(session)
                if attempt == 1:
                    continue
                raise BackendUnavailable(f"consul at {self.where}: the agent lost our check")
            # The check, not the session, ends the lease: it passes until at least a ttl
            # from now (its TTL is still the standby's, longer).
            deadline = min(self._check_ends(check_id), sent + self.ttl)
            lock = {"Verb": "lock", "Key": key, "Value": value, "Flags": base, "Session": session}
            try:
                body = json.dumps([{"KV": check}, {"KV": lock}])
                reply = self._http("PUT", "/v1/txn", body=body)
            except BackendUnavailable:
                self._ready[name] = session  # it may have locked: the key tells next time
                raise
            if reply.code == 409 and "invalid session" in reply.body.lower() and attempt == 1:
                self._forget(session)  # the agent restarted without it, or it expired
                continue
            break
        if reply.code == 409:
            text = reply.body.lower()
            if "lock delay" in text:
                # Free, but inside its lock-delay; nothing changed on the key, so the
                # next try need not read it again.
                self._ready[name] = session
                self._free_seen.add(name)
                self._read_at[name] = (time.monotonic(), index, entry)
            elif "invalid session" in text:
                self._forget(session)  # invalidated meanwhile: a new one next time
                self._free_seen.add(name)
            else:
                # The key changed under us: another standby won the race. Keep the
                # session for the next handoff.
                self._ready[name] = session
                self._lost_race.add(name)
            return None
        if reply.code != 200:
            self._destroy(session)
            raise BackendUnavailable(f"consul at {self.where}: {reply.code} {one_line(reply.body)}")
        result = reply.json()
        modify = int(result["Results"][-1]["KV"]["ModifyIndex"])
        token = base + modify
        self._seen[name] = max(self._seen.get(name, 0), token)
        self._base[session] = base
        if (watch := self._standby_watch.pop(name, None)) is not None:
            watch.close()
        self._arm(name, session, modify)
        # The check ends the lease a ttl after a crash, not STANDBY_TTLS ttls: give it
        # the ttl now (its timer restarts), without waiting for the answer, which the
        # first renewal reads. The child starts meanwhile.
        self._shorten(name)
        # Out of the line: that wakes the standby waiting on our line key.
        if (line := self._lines.get(name)) is not None:
            line.leave_soon()
        # A missing key means first use of the name, or Consul lost its data.
        reset = "" if entry is not None else "consul had no record of this lock key"
        return Lease(name, session, token, deadline, state_reset=reset)

    def _shorten(self, name: str) -> None:
        """Send the registration of our check with the ttl on a connection of its own."""
        check_id = self.check_id(name)
        self._drop_shorten(check_id)
        sent = time.monotonic()
        body = json.dumps(self._service(name, self.ttl)).encode()
        conn = self._send("PUT", "/v1/agent/service/register", body)
        if conn is not None:
            self._shortening[check_id] = (conn, sent)

    def _shortened(self, check_id: str) -> bool:
        """True if the registration _shorten() sent succeeded: the check has the ttl."""
        conn, sent = self._shortening.pop(check_id, (None, 0.0))
        if conn is None:
            return False
        try:
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException):
            status = 0
        finally:
            conn.close()
        if status != 200:
            return False
        self._passed[check_id], self._check_ttl[check_id] = sent, self.ttl
        return True

    def _drop_shorten(self, check_id: str) -> None:
        conn, _ = self._shortening.pop(check_id, (None, 0.0))
        if conn is not None:
            conn.close()

    def _send(self, method: str, path: str, body: bytes | None = None) -> Any:
        """Send a request on a connection of its own and return the connection (its
        answer is read later), or None if it could not be sent."""
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            context = ssl.create_default_context(
                cafile=self.verify if isinstance(self.verify, str) else None
            )
            if self.verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.cert:
                context.load_cert_chain(*self.cert)
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=self._headers())
            return conn
        except (OSError, http.client.HTTPException):
            conn.close()
            return None

    def _send_query(self, key: str, index: int, wait: float, line: bool = False) -> Watch | None:
        """A blocking query on a key, on a connection of its own; None if it could not
        be sent."""
        query = urlencode({"index": index, "wait": f"{int(wait * 1000)}ms"})
        conn = self._send("GET", f"/v1/kv/{quote(key, safe='/:')}?{query}")
        return None if conn is None else Watch(conn, wait, line)

    def _arm(self, name: str, session: str, index: int) -> None:
        """Send the holder's blocking query on its key; a failure leaves renew() to read
        instead."""
        old = self._watch.pop(session, None)
        if old is not None:
            old.close()
        if (watch := self._send_query(self.key(name), index, WATCH_WAIT)) is not None:
            self._watch[session] = watch

    def _check_watch(self, lease: Lease) -> bool:
        """Read the watch if it answered. True when it still stands (the key is ours
        and the watch is armed again), False when renew() must read the key itself.
        Raises LeaseLost when the answer says the key is no longer ours."""
        watch = self._watch.get(lease.token)
        if watch is None:
            return False
        # The answer to a change made just before this renewal may still be in flight.
        if not watch.ready(0.01):
            if not watch.overdue():
                return True
            watch.close()
            del self._watch[lease.token]
            return False
        try:
            status, index, data = watch.result()
        except (OSError, ValueError, http.client.HTTPException):
            status, index, data = 0, 0, None
        watch.close()
        del self._watch[lease.token]
        if status == 404:
            raise LeaseLost(f"{self.key(lease.name)} was deleted")
        if status != 200:
            return False  # an agent restarting, no leader: look for ourselves
        entry = data[0] if isinstance(data, list) and data else {}
        if entry.get("Session") != lease.token:
            raise LeaseLost(f"{self.key(lease.name)} is no longer held by our session")
        self._arm(lease.name, lease.token, index)
        return True

    def renew(self, lease: Lease) -> Lease:
        with self._lock:  # a renewal abandoned on its timeout may still be running
            try:
                return self._renew(lease)
            except LeaseLost:
                self._forget(lease.token)
                self._deregister(lease.name)  # its session is gone: so goes the check
                raise

    def _forget(self, session: str) -> None:
        self._renewed.pop(session, None)
        self._base.pop(session, None)
        if (watch := self._watch.pop(session, None)) is not None:
            watch.close()

    def _renew(self, lease: Lease) -> Lease:
        check_id = self.check_id(lease.name)
        sent = time.monotonic()
        if self._check_ttl.get(check_id) != self.ttl and not self._shortened(check_id):
            # The acquisition could not shorten the check's TTL from the standby's:
            # do it now. Registering it again with the ttl keeps its status and restarts
            # its timer (a pass); if the agent had forgotten it, the watch or the read
            # below finds the session gone.
            self._http_renewal_register(lease.name)
        elif not self._pass(check_id):
            # The agent forgot our check (restarted without its state, or an
            # operator removed it): that invalidated the session.
            raise LeaseLost("the consul agent no longer has our check")
        watching = self._check_watch(lease)
        if (line := self._lines.get(lease.name)) is not None:
            line.settle()  # the delete of our line key sent at acquisition
        # With serfHealth in the session, the servers can invalidate it while our agent,
        # cut off from them, still takes our check passes: renew the session (the
        # servers answer) every time, so a renewal only counts with the servers' word.
        due = time.monotonic() - self._renewed.get(lease.token, 0.0) > self.backstop / 3
        if self.node_check or due:
            reply = self._http_renewal("PUT", f"/v1/session/renew/{lease.token}")
            if reply.code == 404:
                raise LeaseLost("consul invalidated our session")
            self._renewed[lease.token] = sent
        if not watching:
            index, entry = self._read(lease.name)
            if entry is None or entry.get("Session") != lease.token:
                raise LeaseLost(f"{self.key(lease.name)} is no longer held by our session")
            self._arm(lease.name, lease.token, index)
        return Lease(lease.name, lease.token, lease.fencing_token, sent + self.ttl)

    def _http_renewal_register(self, name: str) -> None:
        try:
            self._register_check(name, self.ttl)
        except ConfigError as exc:
            raise BackendUnavailable(str(exc)) from exc

    def _http_renewal(self, method: str, path: str) -> Reply:
        """A renewal request: a refusal a holder cannot act on is "cannot tell", so it
        fences by its deadline rather than exiting with a child running."""
        try:
            return self._http(method, path)
        except ConfigError as exc:
            raise BackendUnavailable(str(exc)) from exc

    def watch_fd(self) -> int | None:
        watches = list(self._watch.values())
        return watches[-1].fd if watches else None

    def release(self, lease: Lease) -> None:
        holder = HolderInfo(node_id=self.node).to_json()
        base = self._base.get(lease.token, OFFSET)
        params = [("release", lease.token), ("flags", base)]
        # The unlock first: it wakes the standbys. Removing the check then ends the
        # session (one request fewer than destroying it too).
        self._http("PUT", f"/v1/kv/{self.key(lease.name)}", params, holder)
        self._forget(lease.token)
        self._deregister(lease.name)

    def refused_by(self, name: str) -> HolderInfo | None:
        if name in self._lost_race:
            line = self._lines.get(name)
            if name in self._named and (line is None or not line.head):
                # One of many woken at once: no read each now; wait() reads after a pause.
                return None
            # The first refusal (the log names the holder), or a head woken with only a
            # few others: read who won; acquire() uses this read, with no request of its own.
            index, entry = self._read(name)
            self._read_at[name] = (time.monotonic(), index, entry)
        else:
            entry = self._refused_by.pop(name, None)
            if entry is None:
                _, entry = self._read(name)
        self._named.add(name)
        return self._describe(entry)

    def holder(self, name: str) -> HolderInfo | None:
        _, entry = self._read(name)
        return self._describe(entry)

    @staticmethod
    def _describe(entry: dict[str, Any] | None) -> HolderInfo | None:
        if entry is None or not entry.get("Session"):
            return None
        value = base64.b64decode(entry.get("Value") or "") or b"{}"
        return HolderInfo.from_json(value, fencing_token=token_of(entry))

    def wait(self, name: str, timeout: float) -> None:
        """Until the key may be free or `timeout` passes, on a blocking query that stays
        open across calls: on the key for a head of the line, re-sent every STANDBY_PASS
        ttls with a pass of the ready session's check; on the line key ahead for a
        standby further back, which looks at the line again when that key changes or
        every LOOK_TTLS ttls. acquire() then uses what the key was when last seen: no
        request of its own."""
        if name in self._lost_race:
            self._lost_race.discard(name)
            if (line := self._lines.get(name)) is not None and line.head:
                # Woken with only a few others: read the key and wait again at once,
                # ready for a release that may come right after.
                return
            # Another standby won a race: its child starts now, among every standby
            # the release woke (we had no place in the line). Stay out of its way a
            # moment, out of step with the others, before reading the key and waiting
            # again (a crash of the new holder takes at least the lock-delay to free
            # the key anyway).
            time.sleep(min(timeout, LOST_RACE_PAUSE * self.ttl * random.uniform(0.5, 1.5)))
            return
        if name in self._free_seen or timeout < 0.1:
            self._free_seen.discard(name)
            # A free key we could not lock is inside its lock-delay; nothing will
            # change on it to end a blocking query, so look again shortly.
            time.sleep(min(timeout, FREE_POLL * random.uniform(0.8, 1.2)))
            return
        end = time.monotonic() + timeout
        watch = self._standby_watch.get(name)
        if watch is not None and watch.overdue():
            watch.close()
            del self._standby_watch[name]
            watch = None
        self._keep_ready(name, watching=watch is not None)
        for _ in range(3):  # a line key that answers: look again, wait on what comes next
            if watch is None:
                watch = self._next_watch(name)
                if watch is None:
                    return  # a look found the key free: acquire() tries it
                self._standby_watch[name] = watch
            if not watch.ready(max(0.0, end - time.monotonic())):
                return
            if not watch.line:
                self._consume(name)
                return
            # The line key ahead went or changed, or the wait ended: look again.
            del self._standby_watch[name]
            watch.close()
            watch = None

    def _next_watch(self, name: str) -> Watch | None:
        """A standby's next blocking query: on the line key ahead for one further back
        in the line, else on the lock key. None when a look found the lock key free."""
        key, index, ttls, line = self.key(name), 0, STANDBY_PASS, False
        if (look := self._look(name)) is not None:
            self._index[name], self._known[name] = look.index, look.lock
            if look.lock is None or not look.lock.get("Session"):
                self._read_at[name] = (time.monotonic(), look.index, look.lock)
                return None
            if look.target is not None:
                key, index = str(look.target["Key"]), int(look.target["ModifyIndex"])
                ttls, line = LOOK_TTLS, True
        if not line:
            if name not in self._known:
                self._index[name], self._known[name] = self._read(name)
            index = self._index.get(name, 0)
        watch = self._send_query(key, index, min(ttls * self.ttl, WATCH_WAIT), line)
        if watch is None:
            raise BackendUnavailable(f"consul at {self.where}: cannot send a query")
        return watch

    def _look(self, name: str) -> Look | None:
        """Take our place in the line (joining it with the ready session if need be) and
        what the look saw; None for a head, or when the line cannot be used now (no
        ready session yet, a request failed): the standby then waits on the lock key,
        which only wakes it with more others."""
        session = self._ready.get(name)
        if session is None:
            return None
        line = self._line(name)
        try:
            for _ in range(2):  # again if our line key was gone
                if not line.join(session):
                    return None
                if line.head:
                    return None
                if (look := line.look()) is not None:
                    return look
        except BackendUnavailable as exc:
            if "invalid session" in str(exc):
                self._forget(self._ready.pop(name))  # ended out of band: a new one next time
        except (BackendRejected, ConfigError):
            pass
        return None

    def _consume(self, name: str) -> bool:
        """Read the standby's blocking query's answer; True if it told what the key is."""
        watch = self._standby_watch.pop(name)
        try:
            status, index, data = watch.result()
        except (OSError, ValueError, http.client.HTTPException):
            status, index, data = 0, 0, None
        watch.close()
        if status not in (200, 404):
            self._known.pop(name, None)  # an agent restarting, no leader: read next time
            return False
        entry = data[0] if isinstance(data, list) and data else None
        if entry is not None and entry.get("Session"):
            self._seen[name] = max(self._seen.get(name, 0), token_of(entry))
        # Consul: an index that goes backwards is a reset; start over from 0.
        last = self._index.get(name, 0)
        self._index[name] = index if index >= last else 0
        self._known[name] = entry
        self._read_at[name] = (time.monotonic(), index, entry)
        return True

    def close(self) -> None:
        for check_id in list(self._shortening):
            self._drop_shorten(check_id)
        for session in list(self._watch):
            self._watch.pop(session).close()
        for name in list(self._standby_watch):
            self._standby_watch.pop(name).close()
        for line in self._lines.values():
            with contextlib.suppress(BackendUnavailable, BackendRejected, ConfigError):
                line.leave()  # before the check goes: deleted, not just released
        # Removing a check ends the ready session tied to it.
        self._ready.clear()
        for check_id in list(self._checks):
            with contextlib.suppress(BackendUnavailable, BackendRejected, ConfigError):
                self._unregister(check_id, check_id)
        self._checks.clear()
        self.client.http.session.close()


DEFAULT_PORTS = {"http": 8500, "https": 443, "": 8500}
TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no space: ACL tokens are UUIDs


def check_tls_files(verify: bool | str, cert: tuple[str, str] | None) -> None:
    """CONSUL_CACERT and the client certificate: one that cannot be read is a usage
    error at start (tls.unreadable)."""
    named = [("CONSUL_CACERT", verify)] if isinstance(verify, str) else []
    if cert is not None:
        named += [("CONSUL_CLIENT_CERT", cert[0]), ("CONSUL_CLIENT_KEY", cert[1])]
    for variable, path in named:
        if why := tls.unreadable(path):
            raise ConfigError(f"{variable}={path} {why}")


def key_problem(key: str) -> str:
    """Why Consul would refuse `key` or read another key than the one written (its HTTP
    API cleans paths and validates names; its transactions do neither); "" if none."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "control characters (a newline, a tab) are not allowed"
    if key != key.strip(" "):
        return "leading or trailing spaces are not allowed"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "empty, '.' and '..' path segments are not allowed (no '//', no '/' at either end)"
    if "%" in key:
        # The HTTP API decodes percent-escapes (%2F is a '/'), transactions do not.
        return "'%' is not allowed (the HTTP API would read a different key)"
    return ""


def lock_delay(config: Config) -> float:
    """How long Consul keeps the key from everyone after invalidating a session: the
    holder's watch tells it at once, a renewal (one call timeout) reports the loss,
    then the child gets `grace` and is reaped within the margin. An explicit
    --safety-delay wins."""
    if config.safety_delay is not None:
        return config.safety_delay
    needed = config.call_timeout + config.grace + config.margin
    if config.consul_node_check:
        # serfHealth turns critical when the holder's agent dies, and the holder,
        # whose watch and renewals went through that agent, hears nothing: its own
        # deadline (at most a ttl away) is what stops its child.
        return max(needed, config.ttl)
    return needed


def create(config: Config) -> Backend:
    if config.ttl < MIN_TTL:
        raise ConfigError(
            f"--ttl {config.ttl:g}s is below the consul backend's minimum of {MIN_TTL:g}s: "
            f"use --ttl {MIN_TTL:g} or more"
        )
    if max(10.0, BACKSTOP_TTLS * config.ttl) > SESSION_TTL_MAX:
        raise ConfigError(
            f"--ttl must be at most {SESSION_TTL_MAX / BACKSTOP_TTLS:g} seconds with the consul "
            f"backend (its backstop session TTL, {BACKSTOP_TTLS} x ttl, must stay within "
            f"Consul's longest, 24 h), got {config.ttl:g}"
        )
    if (delay := lock_delay(config)) > LOCK_DELAY_MAX:
        raise ConfigError(
            f"the consul lock-delay would be {delay:g}s (--safety-delay, or the ttl with "
            f"--consul-node-check) and Consul caps it at {LOCK_DELAY_MAX:g}s: lower it"
        )
    key = f"{config.key_prefix}{config.name}"
    if problem := key_problem(key):
        raise ConfigError(f"consul key {key!r} (--key-prefix + --name): {problem}")
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
        lock_delay(config),
        config.consul_node_check,
        config.node_id,
    )
