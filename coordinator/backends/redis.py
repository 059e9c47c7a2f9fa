"""Redis: SET NX PX with a random token, Lua compare-and-set to renew and release.

Keys, with a hash tag so they share a cluster slot:
  {prefix}{<name>}           the lock; value is JSON {token, fencing_token, holder}
  {prefix}{<name>}/state     hash, never expires: `fence` (the fencing counter) and
                             `until` (server time in ms when the current lease ends;
                             0 after a release)
  {prefix}{<name>}/released  pub/sub channel; a graceful release publishes on it

The lock can vanish while its holder still runs: a DEL by an operator, a restart
(without persistence, or from a snapshot older than the lock), a failover to a
replica that had not seen the key. A newcomer that finds no lock but an `until`
still in the future, no state hash at all, or a server that started less than a ttl
ago, gets a lease marked state_reset, and the supervisor waits its safety delay
before starting the child. The fencing token is one more than the last, and never
less than the server clock in milliseconds, so it keeps increasing across a loss of
all data or a restore of older data.

Behind Sentinel (redis+sentinel:// URLs), coordinator/backends/redis_sentinel.py adds
what replication needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from coordinator.backends import tls
from coordinator.backends.base import Backend, HolderInfo, Lease, json_object
from coordinator.config import Config, redact_url
from coordinator.errors import BackendRejected, BackendUnavailable, ConfigError, LeaseLost

DEFAULT_URL = "redis://localhost:6379/0"
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")

NOW_MS = """
local function now_ms()
  local t = redis.call('time')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

ACQUIRE = (
    NOW_MS
    + """
local held = redis.call('get', KEYS[1])
if held then  -- refused: who holds it comes along, so a standby needs no second read
  return {0, redis.call('pttl', KEYS[1]), held, 0}
end
local now = now_ms()
local reset = 0
local fence = redis.call('hget', KEYS[2], 'fence')
local uptime = -1
if not fence then
  reset = 1
elseif tonumber(redis.call('hget', KEYS[2], 'until') or '0') > now then
  reset = 2
else
  local info = redis.pcall('info', 'server')  -- an error if INFO is renamed away
  local up = type(info) == 'string' and tonumber(string.match(info, 'uptime_in_seconds:(%d+)'))
  if up and up * 1000 < tonumber(ARGV[2]) then
    reset, uptime = 3, up
  end
end
-- Never below the server clock: a restore from an older snapshot brings back an
-- older counter, and a loss of all data none at all.
local fencing = math.max(tonumber(fence or '0') + 1, now)
redis.call('hset', KEYS[2], 'fence', string.format('%d', fencing))
redis.call('hset', KEYS[2], 'until', string.format('%d', now + tonumber(ARGV[2])))
local value = cjson.encode({token = ARGV[1], fencing_token = fencing,
                            holder = cjson.decode(ARGV[3])})
redis.call('set', KEYS[1], value, 'PX', ARGV[2])
return {1, fencing, reset, uptime}
"""
)

# The lock is ours only if the token in its JSON value matches, so a stale holder can
# never extend or delete a newer lease.
OWNED = """
local function owned()
  local v = redis.call('get', KEYS[1])
  if not v then return false end
  local ok, d = pcall(cjson.decode, v)
  return ok and type(d) == 'table' and d.token == ARGV[1]
end
"""

RENEW = (
    NOW_MS
    + OWNED
    + """
if owned() then
  redis.call('pexpire', KEYS[1], ARGV[2])
  redis.call('hset', KEYS[2], 'until', string.format('%d', now_ms() + tonumber(ARGV[2])))
  return 1
end
return 0
"""
)

RELEASE = (
    OWNED
    + """
if owned() then
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'until', '0')
  redis.call('publish', ARGV[2], 'released')
  return 1
end
return 0
"""
)

RESETS = {
    0: "",
    1: "redis has no record of this lock (first use of the name, or the server lost its data)",
    2: "the lock key vanished before its lease ran out (deleted, or lost by the server)",
    3: "the server started {uptime}s ago; a lock held before that may be lost",
}


# Answers that waiting cannot change: the URL or the server's setup must be fixed.
CONFIG_TEXT = (
    "DB index is out of range",  # SELECT n beyond the server's `databases`
    "invalid DB index",
    "protocol must be",  # ?protocol= other than 2 or 3
    "Client names cannot",  # ?client_name= with a space
    "WRONGTYPE",  # our key holds another type: someone else uses the name
)


def translate(exc: Exception, where: str) -> Exception:
    """Map a redis-py error to the contract's outcomes, once: what waiting can fix
    (refused, timeouts, LOADING after a restart, READONLY during a failover, OOM,
    anything unknown) is BackendUnavailable and retried; see docs/exit-codes.md."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    # "unknown command 'EVALSHA', with args beginning with: ..." quotes our lease token.
    text = text.split(", with args beginning with", 1)[0]
    if tls.verification_failed(exc):
        return BackendRejected(tls.describe("redis", where, text))
    if text.startswith(CONFIG_TEXT) or isinstance(
        exc, redis.exceptions.MovedError | redis.exceptions.AskError
    ):
        return ConfigError(f"redis at {where}: {text}")
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.NoPermissionError):
        return BackendRejected(f"redis at {where} refused us: {text}")
    if isinstance(exc, redis.ResponseError) and text.startswith(
        ("NOAUTH", "WRONGPASS", "NOPERM", "unknown command")
    ):
        # A command renamed or disabled in the server's configuration stays so.
        return BackendRejected(f"redis at {where} refused us: {text}")
    return BackendUnavailable(f"redis at {where}: {text}")


def client_options(timeout: float) -> dict[str, Any]:
    """How every connection is made: hard timeouts, and one attempt per call (the
    supervisor decides when to retry)."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }


# The ?ssl_*= options that name a file (or, ssl_ca_path, a directory) read at connect.
TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")
# Redis reads a database number as a C int.
MAX_DB = 2**31 - 1


def check_options(client: redis.Redis) -> None:
    """Build (not connect) one connection: an unknown ?option= fails here. A TLS file
    that cannot be read would fail every connection alike, as "cannot reach"."""
    pool = client.connection_pool
    pool.connection_class(**pool.connection_kwargs)
    db = pool.connection_kwargs.get("db") or 0
    if isinstance(db, int) and db > MAX_DB:  # ?db=; a negative one the server refuses
        raise ConfigError(f"the database number must be 0 to {MAX_DB}, got {db}")
    for name in TLS_FILES:
        path = pool.connection_kwargs.get(name)
        if path and (why := tls.unreadable(path)):
            raise ConfigError(f"the redis URL's ?{name}={path} {why}")


def check_db(text: str, shown: str) -> None:
    """A database number: ASCII digits (int() takes any script's) up to MAX_DB (beyond
    it the server answers "value is not an integer or out of range", which no waiting
    changes)."""
    if not re.fullmatch(r"[0-9]+", text) or int(text) > MAX_DB:
        raise ConfigError(
            f"the database number must be 0 to {MAX_DB} (the server's `databases` sets "
            f"the real limit), got {text!r} in {shown!r}"
        )


def option_error(exc: Exception) -> str:
    detail = str(exc)
    if isinstance(exc, TypeError) and (bad := re.search(r"argument '(\w*)'", detail)):
        detail = f"unknown option {bad.group(1)!r}" if bad.group(1) else "an option without a name"
    return detail


class RedisBackend(Backend):
    name = "redis"

    def __init__(self, url: str, ttl: float, timeout: float, prefix: str) -> None:
        self.where = redact_url(url)
        self.ttl = ttl
        self.ttl_ms = int(ttl * 1000)
        self.prefix = prefix
        self.client = self._connect(url, timeout)
        self._acquire = self.client.register_script(ACQUIRE)
        self._renew = self.client.register_script(RENEW)
        self._release = self.client.register_script(RELEASE)
        self._pubsub: Any = None
        self._free_at: dict[str, float] = {}  # monotonic time a seen lease runs out
        self._refusals: dict[str, tuple[Any, int]] = {}  # name -> (value, pttl) that said no

    def _connect(self, url: str, timeout: float) -> redis.Redis:
        try:
            client = redis.Redis.from_url(url, **client_options(timeout))
            check_options(client)
        except (ValueError, TypeError, redis.RedisError) as exc:
            raise ConfigError(f"malformed redis URL {self.where!r}: {option_error(exc)}") from exc
        return client

    def _keys(self, name: str) -> tuple[str, str, str]:
        base = f"{self.prefix}{{{name}}}"
        return base, f"{base}/state", f"{base}/released"

    def describe(self, name: str) -> str:
        return f"key {self._keys(name)[0]} on {self.where}"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise translate(exc, self.where) from exc

    def write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script that writes state others rely on (the Celery store's)."""
        return self._call(script, keys=keys, args=args)

    def _translate(self, exc: Exception) -> Exception:
        return translate(exc, self.where)

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        key, state, _ = self._keys(name)
        token = self._new_token()
        sent = time.monotonic()
        won, value, reset, uptime = self._call(
            self._acquire, keys=[key, state], args=[token, self.ttl_ms, info.to_json()]
        )
        if not won:
            self._refused(name, sent, int(value), reset)
            return None
        return self._lease(name, token, int(value), sent, int(reset), uptime)

    @staticmethod
    def _new_token() -> str:
        return os.urandom(16).hex()

    def _lease(
        self,
        name: str,
        token: str,
        fencing_token: int,
        sent: float,
        reset: int,
        uptime: Any,
        ready: bool = True,
    ) -> Lease:
        return Lease(
            name,
            token,
            fencing_token,
            sent + self.ttl,
            state_reset=RESETS[reset].format(uptime=uptime),
            ready=ready,
        )

    def _refused(self, name: str, sent: float, pttl: int, held: Any) -> None:
        """Remember when the lease seen at a refused attempt runs out, for wait(), and
        who held it, for refused_by()."""
        self._refusals[name] = (held, pttl)
        # -1: a key without expiry (not ours to judge); -2: it just went away.
        self._free_at[name] = (
            sent + pttl / 1000 if pttl >= 0 else sent + (self.ttl if pttl == -1 else 0)
        )

    def renew(self, lease: Lease) -> Lease:
        key, state, _ = self._keys(lease.name)
        sent = time.monotonic()
        if not self._call(self._renew, keys=[key, state], args=[lease.token, self.ttl_ms]):
            raise LeaseLost(f"{key} is gone or held by someone else")
        return Lease(lease.name, lease.token, lease.fencing_token, sent + self.ttl)

    def release(self, lease: Lease) -> None:
        key, state, channel = self._keys(lease.name)
        self._call(self._release, keys=[key, state], args=[lease.token, channel])

    def refused_by(self, name: str) -> HolderInfo | None:
        refusal = self._refusals.pop(name, None)
        return self.holder(name) if refusal is None else self._holder_info(*refusal)

    def holder(self, name: str) -> HolderInfo | None:
        key, _, _ = self._keys(name)
        pipe = self.client.pipeline(transaction=True)
        pipe.get(key)
        pipe.pttl(key)
        value, pttl = self._call(pipe.execute)
        return self._holder_info(value, pttl)

    @staticmethod
    def _holder_info(value: Any, pttl: int) -> HolderInfo | None:
        if value is None:
            return None
        data = json_object(value)
        return HolderInfo.from_dict(
            data.get("holder"),
            fencing_token=data.get("fencing_token"),
            ttl_left=pttl / 1000 if pttl >= 0 else None,
        )

    def wait(self, name: str, timeout: float) -> None:
        """Sleep until a release is published or the lease seen last runs out."""
        start = time.monotonic()
        end = min(start + timeout, self._free_at.get(name, start + timeout) + 0.001)
        _, _, channel = self._keys(name)
        try:
            if self._pubsub is None:
                self._pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
                self._pubsub.subscribe(channel)
                return  # a release may have been missed before subscribing: look again
            while (left := end - time.monotonic()) > 0:
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is not None and message.get("type") == "message":
                    return
        except redis.RedisError as exc:
            self._drop_pubsub()
            raise translate(exc, self.where) from exc

    def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        self._drop_pubsub()
        self.client.close()


def create(config: Config) -> Backend:
    url = config.url or os.environ.get("REDIS_URL") or DEFAULT_URL
    if url.startswith(SENTINEL_SCHEMES):
        from coordinator.backends.redis_sentinel import SentinelBackend

        return SentinelBackend(url, config.ttl, config.call_timeout, config.key_prefix)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "redis URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
            f"rediss+sentinel://, got {redact_url(url)!r}"
        )
    check_url(url)
    return RedisBackend(url, config.ttl, config.call_timeout, config.key_prefix)


def check_url(url: str) -> None:
    """What redis-py would silently read otherwise: port 0 as 6379, a database that is
    not a number as 0."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return  # redis-py says what is wrong with it
    if port == 0:
        raise ConfigError(f"invalid port 0 in the redis URL {redact_url(url)!r}")
    path = unquote(parts.path)
    if parts.scheme != "unix" and not re.fullmatch(r"/?([0-9]+)?", path):
        raise ConfigError(
            f"the redis URL's path must be a database number like /0, got "
            f"{path!r} in {redact_url(url)!r}"
        )
    if parts.scheme != "unix" and path.strip("/"):
        check_db(path.strip("/"), redact_url(url))
