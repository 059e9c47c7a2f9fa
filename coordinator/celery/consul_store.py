"""Consul KV: the key {prefix}<name>/celery beside the lock key, a JSON document
written with check-and-set on its ModifyIndex (cas=0: only if absent). The fence is
checked on the document that was read; the check-and-set makes sure it is still that
document when the write lands.

Consul limits a value to 512 KiB by default (kv_max_value_size): about 5,000 entries
with short names. The ACL token needs key write on the prefix, as for the lock.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from coordinator.backends.consul import ConsulBackend
from coordinator.celery.store import (
    ABSENT,
    Conflict,
    EntryState,
    Fenced,
    Snapshot,
    Store,
    decode,
    encode,
)


class ConsulStore(Store):
    def __init__(self, backend: Any, name: str, prefix: str) -> None:
        super().__init__(backend, name, prefix)
        assert isinstance(backend, ConsulBackend)
        self.consul: ConsulBackend = backend
        self.key = f"{backend.key(name)}/celery"
        self._known = (ABSENT, 0)  # the version last read or written, and its fence

    def describe(self) -> str:
        return f"key {self.key} on consul at {self.consul.where}"

    def read(self) -> Snapshot:
        reply = self.consul._http("GET", f"/v1/kv/{self.key}", [("consistent", "")])
        data = reply.json() if reply.code == 200 else None
        entry = data[0] if isinstance(data, list) and data else None
        snapshot = (
            Snapshot(0, {}, ABSENT)
            if entry is None
            else decode(base64.b64decode(entry.get("Value") or ""), str(entry["ModifyIndex"]))
        )
        self._known = (snapshot.version, snapshot.fence)
        return snapshot

    def write(self, token: int, entries: dict[str, EntryState], version: str) -> str:
        # Consul cannot compare a value on the server: check the fence of the version we
        # replace (read again unless it is the one we last saw); the check-and-set below
        # fails if the key moved on from that version.
        if self._known[0] != version:
            self.read()
        known_version, fence = self._known
        if known_version != version:
            raise Conflict()
        if fence > token:
            raise Fenced(fence)
        value = base64.b64encode(encode(token, entries).encode()).decode()
        # A transaction, because its reply carries the new ModifyIndex. Index 0: only if
        # the key does not exist yet.
        operation = {"Verb": "cas", "Key": self.key, "Value": value, "Index": int(version or 0)}
        reply = self.consul._http("PUT", "/v1/txn", body=json.dumps([{"KV": operation}]))
        if reply.code == 409:
            self.refuse(token)
        new = str(reply.json()["Results"][0]["KV"]["ModifyIndex"])
        self._known = (new, token)
        return new
