"""The line of Consul standbys: a release wakes only the few at its head.

Each standby holds a line key, `{lock key}/line/<its ready session>`, locked by that
session, so the key is released when the session ends. The line is ordered by the
keys' CreateIndex. The first HEADS live entries (those with a session) are heads:
they wait on the lock key itself and race for it when it frees. A standby at position
i >= HEADS waits on the line key at position i - HEADS: when that one goes (its
standby took the lock, stopped, or died) it looks at the line again and takes its new
place. Watching i - HEADS rather than i - 1 means a head that leaves wakes the
standby HEADS places behind it, which becomes a head in its stead.

The line only decides who is woken; the lock is still one transaction on the lock key.
A standby that cannot place itself (no line key yet, a failed request) waits on the
lock key like a head. A broken line (a head dead while its session lives on) costs
liveness only: every LOOK_TTLS ttls a standby further back looks at the line and at
the lock key, and tries a free lock key.

A look is one read-only transaction: the lock key and the whole line. Released line
keys (their session ended without a graceful stop) are deleted by whoever sees them, a
few per look, each by a check-and-set on its ModifyIndex.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import select
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from coordinator.errors import BackendRejected, BackendUnavailable, ConfigError

# Heads woken by a release: one wins, the others are spares in case one died with its
# session still alive (a killed standby's check takes up to 5 ttls to expire). Each
# woken head sends a transaction (a Raft write) while the winner's child starts, so
# few: 3 keeps a release on 2 cores about as fast as with one standby.
HEADS = 3
# A standby further back waits this long (in ttls) on the line key ahead of it, then
# looks at the line and the lock key again: with its check pass every 3 ttls, 0.73
# requests per ttl, as for a head. This bounds what a broken line costs.
LOOK_TTLS = 6.0
# Released line keys a look deletes at most: after an agent restart ended many
# sessions at once, the standbys that look do not all delete the same keys.
DEAD_PER_LOOK = 2
# What a best-effort request may raise.
REFUSED = (BackendUnavailable, BackendRejected, ConfigError)


class Reply(Protocol):
    code: int
    headers: Mapping[str, str]
    body: str

    def json(self) -> Any: ...


class Http(Protocol):
    def __call__(
        self,
        method: str,
        path: str,
        params: list[tuple[str, Any]] | None = None,
        body: str = "",
    ) -> Reply: ...


@dataclass(frozen=True)
class Look:
    """What a look saw: the lock key's entry (None when absent) and the index to block
    on it with; the line entry to wait on (None for a head)."""

    lock: dict[str, Any] | None
    index: int
    target: dict[str, Any] | None


def place(
    entries: list[dict[str, Any]], mine: str
) -> tuple[int | None, dict[str, Any] | None, list[dict[str, Any]]]:
    """Our position among the live entries (None if our key is not there), the entry
    to wait on (None for a head), and the released entries."""
    live = sorted((e for e in entries if e.get("Session")), key=lambda e: int(e["CreateIndex"]))
    dead = [e for e in entries if not e.get("Session")]
    keys = [str(e.get("Key")) for e in live]
    if mine not in keys:
        return None, None, dead
    position = keys.index(mine)
    return position, (live[position - HEADS] if position >= HEADS else None), dead


class Line:
    """One standby's place in the line of one lock key."""

    def __init__(
        self,
        request: Http,
        send: Callable[[str, str], http.client.HTTPConnection | None],
        key: str,
        value: str,
    ) -> None:
        self.request, self.send = request, send
        self.key, self.prefix, self.value = key, f"{key}/line/", value
        self.session: str | None = None  # the session our line key is locked by
        self.head = False  # placed among the heads: no more looks until the session changes
        # A delete sent on a connection of its own, unread; its key; whether to send it
        # again if it fails.
        self.leaving: tuple[http.client.HTTPConnection | None, str, bool] | None = None

    def path(self, key: str) -> str:
        return f"/v1/kv/{key}"

    def join(self, session: str) -> bool:
        """Hold our line key with `session`, the standby's ready session; False if
        Consul said no. A new session is a new key, at the end of the line (the key of
        an ended session may sit in its lock-delay)."""
        if self.session == session:
            return True
        self.leave()
        reply = self.request(
            "PUT", self.path(self.prefix + session), [("acquire", session)], self.value
        )
        if reply.code != 200 or reply.json() is not True:
            return False
        self.session, self.head = session, False
        return True

    def look(self) -> Look | None:
        """Look at the line and the lock key, take our place; None if our key is gone
        (an operator, or a look that saw our session end): join again."""
        assert self.session is not None
        mine = self.prefix + self.session
        ops = [
            {"KV": {"Verb": "get", "Key": self.key}},
            {"KV": {"Verb": "get-tree", "Key": self.prefix}},
        ]
        reply = self.request("PUT", "/v1/txn", body=json.dumps(ops))
        lock: dict[str, Any] | None
        if reply.code == 200:
            results = [r.get("KV") or {} for r in (reply.json() or {}).get("Results") or []]
            if not results:
                raise BackendUnavailable("consul answered a look at the line with no results")
            lock, entries = results[0], results[1:]
            index = int(lock.get("ModifyIndex") or 0)
        elif reply.code == 409 and "doesn't exist" in reply.body:
            # No lock key (its first use, or deleted): read the line alone.
            lock = None
            reply = self.request("GET", self.path(self.prefix), [("recurse", "")])
            entries = (reply.json() or []) if reply.code == 200 else []
            index = int(reply.headers.get("X-Consul-Index") or 0)
        else:
            raise BackendUnavailable(f"consul refused a look at the line: {reply.code}")
        position, target, dead = place(entries, mine)
        for entry in random.sample(dead, min(DEAD_PER_LOOK, len(dead))):
            with contextlib.suppress(*REFUSED):
                self.request(
                    "DELETE", self.path(str(entry["Key"])), [("cas", entry["ModifyIndex"])]
                )
        if position is None:
            self.session = None
            return None
        self.head = target is None
        return Look(lock, index, target)

    def leave(self) -> None:
        """Delete our line key (a graceful stop, or a new session)."""
        self.settle(wait=True)
        if self.session is not None:
            session, self.session, self.head = self.session, None, False
            self.request("DELETE", self.path(self.prefix + session))

    def leave_soon(self) -> None:
        """Send the delete of our line key on a connection of its own (the standby took
        the lock: its child starts meanwhile); settle() reads the answer."""
        if self.session is not None:
            self.settle(wait=True)
            key, self.session, self.head = self.prefix + self.session, None, False
            self.leaving = (self.send("DELETE", quote(self.path(key), safe="/:")), key, True)

    def settle(self, wait: bool = False) -> None:
        """Read the answer to the delete leave_soon() sent, once it has come (or now,
        with `wait`). If the delete failed, send it once more (now, with `wait`);
        failing again, the key stays until the session ends, then a look deletes it."""
        if self.leaving is None:
            return
        conn, key, again = self.leaving
        if conn is not None and not wait and not readable(conn):
            return  # not answered yet: a holder's renewal does not wait for it
        self.leaving = None
        status = 0
        if conn is not None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                response = conn.getresponse()
                response.read()
                status = response.status
            conn.close()
        if status == 200 or not again:
            return
        if wait:
            with contextlib.suppress(*REFUSED):
                self.request("DELETE", self.path(key))
        else:
            self.leaving = (self.send("DELETE", quote(self.path(key), safe="/:")), key, False)


def readable(conn: http.client.HTTPConnection) -> bool:
    try:
        return conn.sock is None or bool(select.select([conn.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
