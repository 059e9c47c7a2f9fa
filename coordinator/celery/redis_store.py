"""Redis: the hash {prefix}{<name>}/celery (same hash tag, so the same cluster slot as
the lock), fields `fence`, `version` and `entries`. One Lua script checks the version
and the fence and writes, atomically on the server. With a redis+sentinel:// URL the
reads and writes go to the primary Sentinel names, and a write counts only once a
replica acknowledged it (the backend's WAIT)."""

from __future__ import annotations

from typing import Any

import redis

from coordinator.backends.redis import RedisBackend, translate
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

# Returns {1, new version} | {0, fence} on a version mismatch | {-1, fence} when fenced.
WRITE = """
local fence = redis.call('hget', KEYS[1], 'fence') or '0'
if tonumber(ARGV[1]) < tonumber(fence) then return {-1, fence} end
local version = redis.call('hget', KEYS[1], 'version') or ''
if version ~= ARGV[2] then return {0, fence} end
local new = string.format('%d', tonumber(version ~= '' and version or '0') + 1)
redis.call('hset', KEYS[1], 'fence', ARGV[1], 'version', new, 'entries', ARGV[3])
return {1, new}
"""


class RedisStore(Store):
    def __init__(self, backend: Any, name: str, prefix: str) -> None:
        super().__init__(backend, name, prefix)
        assert isinstance(backend, RedisBackend)
        self.redis: RedisBackend = backend
        self.key = f"{prefix}{{{name}}}/celery"
        self._write = backend.client.register_script(WRITE)

    def describe(self) -> str:
        return f"hash {self.key} on {self.redis.where}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise translate(exc, self.redis.where) from exc

    def read(self) -> Snapshot:
        fence, version, text = self._call(
            self.redis.client.hmget, self.key, ["fence", "version", "entries"]
        )
        snapshot = decode(text, version.decode() if version else ABSENT)
        return Snapshot(int(fence or 0), snapshot.entries, snapshot.version)

    def write(self, token: int, entries: dict[str, EntryState], version: str) -> str:
        # Behind Sentinel, a write counts once a replica has it (WAIT), like the lock.
        code, value = self.redis.write(
            self._write, [self.key], [str(token), version, encode(token, entries)]
        )
        if int(code) == 1:
            return str(value.decode() if isinstance(value, bytes) else value)
        if int(code) == -1:
            raise Fenced(int(value))
        raise Conflict()
