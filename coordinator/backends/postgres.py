"""PostgreSQL: session-level advisory locks on dedicated connections.

The lease is `pg_advisory_lock(key)` held by one session (connection A). A second
session (B) holds a "child running" beacon lock while the child may run, released
only after the child is reaped. No table, no DDL, no extra privilege.

- Key: the first 8 bytes of SHA-256 of "<prefix><name>", as a signed bigint; the
  beacon uses "<prefix><name>/running". Logs and `status` show the key, so a DBA can
  find it in pg_locks (classid = high 32 bits, objid = low 32 bits, objsubid = 1).
- Renewal polls, on connection A, that pg_locks still grants the lock to A's backend
  pid and that the pid has not changed. A reconnect is a new session without the lock:
  the lease is then lost, never silently re-taken.
- Server-side lease: each session sets idle_session_timeout (PostgreSQL 14+) and TCP
  keepalive/user timeouts to the ttl, so the server drops a cut-off or frozen holder's
  session, and its lock, about one ttl after its last poll. The holder fences before.
- Standbys block in pg_advisory_lock with a lock_timeout: when the holder's session
  ends (crash, graceful release) the server grants the lock to one of them at once.
- The lock can vanish while its holder runs (pg_terminate_backend, a server restart).
  A newcomer that finds the beacon still held, a server started less than a ttl
  ago, or a standby promoted less than a ttl ago (advisory locks are not replicated;
  see _recovered), gets a lease marked state_reset and waits the safety delay.
- Every session of a live holder can end at once (pg_terminate_backend on all of
  them, a pooler restart, a reset of both connections): the lock and the beacon are
  then free together, as after a crash. Each acquisition and each graceful release
  is announced with NOTIFY on the lock's channel, which standbys LISTEN to. A
  newcomer that did not see the previous holder release holds off HOLD_OFF seconds
  before starting its child; a holder whose lock session ended kills its child at
  once (LeaseLost.stop_now), well within that time. A graceful handoff, announced,
  starts at once. docs/safety.md has the argument.
- Fencing token: txid_current() taken while holding the lock. Transaction ids only
  grow, but after a crash the server reuses those whose commit record had not
  reached the WAL on disk, and a transaction that writes nothing commits without
  waiting for that. So the token's transaction also writes a small logical message
  (pg_logical_emit_message, prefix "coordinator") and commits synchronously; where
  that function is not executable, the holder waits until the WAL is flushed past
  the token before it reports ready for a child.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg.sql

from coordinator import redact
from coordinator.backends import tls
from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.config import Config, redact_url
from coordinator.errors import BackendRejected, BackendUnavailable, ConfigError, LeaseLost
from coordinator.hashing import sha256

REJECTED_STATES = {"28P01", "28000", "3D000", "42501", "3F000", "42883"}
REJECTED_TEXT = re.compile(
    r"password authentication failed|no pg_hba\.conf entry|does not exist|permission denied"
    r"|no password supplied|role .* is not permitted to log in"
    r"|must be superuser or replication role"  # ?replication= without the role
    r"|GSSAPI encryption required but"  # ?gssencmode=require, no credentials or support
)
# Mistakes in the connection string or its options that libpq or the server report
# when connecting (connection errors carry no SQLSTATE): waiting cannot fix them.
CONFIG_STATES = {"22023", "42704"}  # invalid parameter value, unknown setting
CONFIG_TEXT = re.compile(
    r'invalid integer value|invalid port number|invalid \w+ (value|method): "'
    r"|could not match \d+ (host names|port numbers)|invalid connection option"
    r"|requires a value|unrecognized configuration parameter|invalid value for parameter"
    r"|server does not support SSL"
)
# pg_settings' limit for the int GUCs set to the ttl in milliseconds
# (idle_session_timeout, tcp_user_timeout, lock_timeout) is 2147483647 ms; Linux's
# TCP_KEEPIDLE (ttl/3, whole seconds) stops at 32767 s, the lower of the two.
MAX_TTL = 3 * 32767.0

LOCKED_BY = """
SELECT l.pid, a.application_name, host(a.client_addr),
       extract(epoch FROM a.backend_start)::float8
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::int8 = %(hi)s AND l.objid::int8 = %(lo)s
"""

TOKEN = """
SELECT pg_backend_pid(), txid_current(),
       extract(epoch FROM now() - pg_postmaster_start_time())::float8,
       set_config('application_name', 'coordinator ' || txid_current() || ' ' || %(node)s, false),
       pg_notify(%(channel)s, 'acquired')
"""
# Writing WAL makes the commit wait for its flush; at least a local one, whatever
# the server's default.
DURABLE_TOKEN = f"""{TOKEN},
       set_config('synchronous_commit', CASE current_setting('synchronous_commit')
                  WHEN 'off' THEN 'local' ELSE current_setting('synchronous_commit') END, true),
       pg_logical_emit_message(true, 'coordinator', %(lock)s)
"""
# Where the WAL ends now, and whether it is on disk up to there already.
WAL_END = """
SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()
"""
NOT_EXECUTABLE = (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction)
FLUSHED = "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn"

MINE = f"""
SELECT pg_backend_pid(),
       EXISTS (SELECT 1 FROM ({LOCKED_BY}) held WHERE held.pid = pg_backend_pid())
"""


# A promoted standby: it replayed WAL since its postmaster started, on a timeline
# after the first (each promotion starts a new one; the timeline is the first 8 hex
# digits of a WAL file's name). Then: whether that timeline has no checkpoint yet (a
# promotion requests one), and the age of the last checkpoint.
TIMELINE = "('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int"
PROMOTED_SINCE_START = f"SELECT pg_last_wal_replay_lsn() IS NOT NULL AND {TIMELINE} > 1"
RECOVERED = f"""
SELECT ({PROMOTED_SINCE_START}), {TIMELINE} <> c.timeline_id,
       extract(epoch FROM now() - c.checkpoint_time)::float8
FROM pg_control_checkpoint() c
"""
PROMOTED = "the server is a standby promoted {when}, and advisory locks are not replicated"

# How long a newcomer waits when it did not see the previous holder release: a holder
# whose lock session ended sees its socket close at once and SIGKILLs its child.
HOLD_OFF = 0.5
UNANNOUNCED = (
    "no release by the previous holder was announced (it crashed, its sessions "
    "were ended, or this node has just started)"
)


def channel(key: int) -> str:
    """The NOTIFY channel of one lock: acquisitions and graceful releases."""
    return f"coordinator {key}"


def lock_key(text: str) -> int:
    return int.from_bytes(sha256(text.encode()).digest()[:8], "big", signed=True)


def key_parts(key: int) -> dict[str, int]:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF}


def redact_conninfo(conninfo: str) -> str:
    return redact_url(conninfo)


def scrub(message: str, conninfo: str) -> str:
    """libpq's message about `conninfo`, which may quote the URI or a part of it, with
    the URI and its password hidden."""
    redact.register_url(conninfo)
    return redact.redact(message.replace(conninfo, redact_conninfo(conninfo)))


def check_ports(conninfo: str) -> None:
    """Ports from the URL (or PGPORT), checked before any connection attempt."""
    ports = psycopg.conninfo.conninfo_to_dict(conninfo).get("port") or os.environ.get("PGPORT")
    for port in str(ports or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(
                f"invalid port {port!r} in {redact_conninfo(conninfo) or 'PGPORT'}: "
                "use a number from 1 to 65535"
            )


def first_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) or type(exc).__name__


@dataclass
class Held:
    token: str
    key: int
    fencing: int
    beacon: int
    pid: int
    beacon_held: bool
    unflushed: str | None  # the WAL position to see on disk before the token is safe

    @property
    def ready(self) -> bool:
        return self.beacon_held and self.unflushed is None


P = ParamSpec("P")
R = TypeVar("R")


def serialized(
    method: Callable[Concatenate[PostgresBackend, P], R],
) -> Callable[Concatenate[PostgresBackend, P], R]:
    """One call at a time. The supervisor abandons a call that overruns its timeout and
    makes the next one on a new thread while the first may still run (events.Caller);
    both would change the same connections (one dropping the lock connection under
    the other). The next call waits, within its own timeout, for the first to end."""

    def call(self: PostgresBackend, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._calls:
            return method(self, *args, **kwargs)

    return call


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self, conninfo: str, ttl: float, timeout: float, prefix: str, node: str) -> None:
        self.conninfo = conninfo
        self.where = redact_conninfo(conninfo) or "the server from the PG* variables"
        self.ttl, self.timeout, self.prefix, self.node = ttl, timeout, prefix, node
        self._lock_conn: Any = None  # A: contends, then holds the lock
        self._beacon_conn: Any = None  # B: holds the beacon while a child may run
        self._held: dict[str, Held] = {}
        self._granted: set[str] = set()  # locks a blocking wait obtained, not yet leased
        self._emit = True  # pg_logical_emit_message is executable
        # Per lock key, on the current lock session: True when the last announcement
        # seen was a graceful release, False after an acquisition; absent when unknown.
        self._released: dict[int, bool] = {}
        self._listening: set[int] = set()
        self._calls = threading.RLock()  # see serialized(); close() does not wait

    # -- connections ------------------------------------------------------------

    def _connect(self, role: str) -> Any:
        ttl_ms = int(self.ttl * 1000)
        keepalive_idle = max(1, int(self.ttl / 3))
        try:
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=max(2, math.ceil(self.timeout)),
                application_name=f"coordinator {role} {self.node}"[:63],
                keepalives=1,
                keepalives_idle=keepalive_idle,
                keepalives_interval=1,
                keepalives_count=3,
                tcp_user_timeout=ttl_ms,
            )
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        try:
            # The server ends a session that stays idle longer than the ttl: that is
            # the server side of the lease. Older servers lack the setting.
            conn.execute(
                "SELECT set_config('statement_timeout', %(call)s, false),"
                " set_config('tcp_keepalives_idle', %(idle)s, false),"
                " set_config('tcp_keepalives_interval', '1', false),"
                " set_config('tcp_keepalives_count', '3', false),"
                " set_config('tcp_user_timeout', %(ttl)s, false)",
                {
                    "call": str(int(self.timeout * 1000)),
                    "idle": str(keepalive_idle),
                    "ttl": str(ttl_ms),
                },
            )
            if conn.info.server_version >= 140000:
                conn.execute("SELECT set_config('idle_session_timeout', %s, false)", (str(ttl_ms),))
        except psycopg.Error as exc:
            conn.close()
            raise self._translate(exc) from exc
        return conn

    def _lock_connection(self) -> Any:
        if self._lock_conn is None or self._lock_conn.closed:
            if self._held or self._granted:
                raise AssertionError("a held lock cannot move to a new connection")
            self._lock_conn = self._connect("lock")
            self._lock_conn.add_notify_handler(self._announced)
        return self._lock_conn

    def _announced(self, notify: Any) -> None:
        """A NOTIFY on a lock's channel (delivered while a statement runs)."""
        prefix, _, key = notify.channel.rpartition(" ")
        if prefix == "coordinator" and key.lstrip("-").isdigit():
            self._released[int(key)] = notify.payload == "released"

    def _listen(self, key: int) -> None:
        """LISTEN on the lock's channel, once per lock session."""
        if key not in self._listening:
            self._run(
                "_lock_conn",
                psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel(key))),
            )
            self._listening.add(key)

    def _beacon_connection(self) -> bool:
        """Open the beacon session if needed; True when it is a new one."""
        if self._beacon_conn is None or self._beacon_conn.closed:
            self._beacon_conn = self._connect("beacon")
            return True
        return False

    def _drop(self, attr: str) -> None:
        conn = getattr(self, attr)
        setattr(self, attr, None)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        if attr == "_lock_conn":
            self._held.clear()
            self._granted.clear()
            self._released.clear()  # a new session has seen nothing yet
            self._listening.clear()

    def _translate(self, exc: Exception) -> Exception:
        """Classify once: what waiting cannot fix ends the run (ConfigError,
        BackendRejected); the rest (refused, timeouts, "the database system is starting
        up", too many connections, a shutdown) is retried. See docs/exit-codes.md."""
        text = scrub(first_line(exc), self.conninfo)
        state = getattr(exc, "sqlstate", None)
        if tls.verification_failed(exc):
            return BackendRejected(tls.describe("postgres", self.where, text))
        if state in CONFIG_STATES or CONFIG_TEXT.search(text):
            return ConfigError(f"postgres at {self.where}: {text}")
        if state in REJECTED_STATES or REJECTED_TEXT.search(text):
            return BackendRejected(f"postgres at {self.where} refused us: {text}")
        return BackendUnavailable(f"postgres at {self.where}: {text}")

    def _run(self, attr: str, query: Any, params: Any = None) -> Any:
        """One statement; a broken connection is dropped (and its locks with it)."""
        conn = getattr(self, attr)
        try:
            cursor = conn.execute(query, params)
            return cursor.fetchone() if cursor.description else None
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._drop(attr)
            raise self._translate(exc) from exc

    # -- the contract -----------------------------------------------------------

    def keys(self, name: str) -> tuple[int, int]:
        return lock_key(f"{self.prefix}{name}"), lock_key(f"{self.prefix}{name}/running")

    def describe(self, name: str) -> str:
        return f"advisory lock {self.keys(name)[0]} ({self.prefix}{name}) on {self.where}"

    @serialized
    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        if name in self._held:
            return None  # not reentrant, unlike the server's advisory locks
        key, beacon = self.keys(name)
        sent = time.monotonic()
        self._lock_connection()
        self._listen(key)
        if name not in self._granted:
            won, pid = self._run(
                "_lock_conn", "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (key,)
            )
            if not won:
                return None
        else:
            pid = None
        try:
            return self._finish_acquire(name, info, key, beacon, pid, sent)
        except BaseException:
            # Never keep a lock the supervisor does not know it holds.
            self._drop("_lock_conn")
            raise

    def _finish_acquire(
        self, name: str, info: HolderInfo, key: int, beacon: int, pid: int | None, sent: float
    ) -> Lease:
        self._granted.discard(name)
        # What the announcements delivered so far say, before our own arrives.
        announced = self._released.get(key, False)
        now_pid, fencing, uptime = self._take_token(
            f"{self.prefix}{name}", info.node_id[:40], channel(key)
        )
        if pid is not None and pid != now_pid:
            raise BackendRejected(
                f"postgres at {self.where}: consecutive statements ran in different server "
                "sessions; a pooler in transaction mode (PgBouncer) breaks session advisory "
                "locks: connect to PostgreSQL directly or use session pooling"
            )
        unflushed = None
        if not self._emit:
            wal_end, flushed = self._run("_lock_conn", WAL_END)
            unflushed = None if flushed else wal_end
        self._beacon_connection()
        beacon_free, beacon_pid = self._run(
            "_beacon_conn", "SELECT pg_try_advisory_lock(%s), pg_backend_pid()", (beacon,)
        )
        if beacon_pid == now_pid:
            self._refuse_shared_session()
        reset = ""
        if not beacon_free:
            reset = "the previous holder lost its lock but may not have stopped its child yet"
        elif uptime < self.ttl:
            reset = f"the server started {uptime:.1f}s ago and advisory locks do not survive that"
        else:
            reset = self._recovered()
        token = os.urandom(16).hex()
        held = Held(token, key, int(fencing), beacon, now_pid, bool(beacon_free), unflushed)
        self._held[name] = held
        return Lease(
            name,
            token,
            int(fencing),
            sent + self.ttl,
            state_reset=reset,
            ready=held.ready,
            hold_off=0.0 if announced else HOLD_OFF,
            hold_off_reason="" if announced else UNANNOUNCED,
        )

    def _recovered(self) -> str:
        """Why a lock held before may be lost although the postmaster is old: the server
        is a standby promoted less than a ttl ago. "" when it is not."""
        try:
            row = self._run("_lock_conn", RECOVERED)
        except BackendRejected as exc:
            if not isinstance(exc.__cause__, NOT_EXECUTABLE):
                raise
            row = None  # pg_control_checkpoint revoked, or a server older than 10
        if row is None:
            try:
                (replayed,) = self._run("_lock_conn", PROMOTED_SINCE_START)
            except BackendRejected as exc:
                if not isinstance(exc.__cause__, NOT_EXECUTABLE):
                    raise
                return ""
            return PROMOTED.format(when="since it started") if replayed else ""
        promoted, timeline_pending, checkpoint_age = row
        if not promoted:
            return ""
        if timeline_pending:
            return PROMOTED.format(when="and has not completed a checkpoint since")
        # The first checkpoint after the promotion starts after it, so the promotion is
        # at least as old as the last checkpoint (a later checkpoint only makes this
        # cautious for a while); checkpoint_time has whole seconds.
        if checkpoint_age < self.ttl + 1:
            return PROMOTED.format(when=f"at most {checkpoint_age + 1:.0f}s ago")
        return ""

    def _refuse_shared_session(self) -> None:
        """Our two connections run on one server session: a pooler in transaction mode
        hands an idle server session to whichever client asks next. The pooler keeps
        that session, so the locks just taken in it are let go before we refuse."""
        for attr in ("_beacon_conn", "_lock_conn"):
            with contextlib.suppress(BackendUnavailable, BackendRejected):
                self._run(attr, "SELECT pg_advisory_unlock_all()")
        self._drop("_beacon_conn")
        raise BackendRejected(
            f"postgres at {self.where}: the lock and beacon connections ran in the same "
            "server session; a pooler in transaction mode (PgBouncer) breaks session "
            "advisory locks: connect to PostgreSQL directly or use session pooling"
        )

    def _take_token(self, lock: str, node: str, chan: str) -> tuple[int, int, float]:
        """The fencing token, from a transaction whose commit is on disk if we can; the
        same transaction announces the acquisition."""
        params = {"node": node, "lock": lock, "channel": chan}
        row = None
        if self._emit:
            try:
                row = self._run("_lock_conn", DURABLE_TOKEN, params)
            except BackendRejected as exc:
                if not isinstance(exc.__cause__, NOT_EXECUTABLE):
                    raise
                self._emit = False  # revoked or missing: wait for the WAL flush instead
        if row is None:
            row = self._run("_lock_conn", TOKEN, params)
        return int(row[0]), int(row[1]), float(row[2])

    @serialized
    def renew(self, lease: Lease) -> Lease:
        held = self._held.get(lease.name)
        if held is None or held.token != lease.token:
            raise LeaseLost("this lease was released or its connection was lost", stop_now=True)
        sent = time.monotonic()
        # Every loss below may have freed the beacon too (all of our sessions ended at
        # once): a newcomer then waits only HOLD_OFF, so the child must die at once.
        try:
            pid, mine = self._run("_lock_conn", MINE, key_parts(held.key))
        except BackendUnavailable as exc:
            if lease.name not in self._held:  # the connection broke: the session is gone
                raise LeaseLost(
                    f"the connection holding the lock was lost ({exc})", stop_now=True
                ) from exc
            raise
        if pid != held.pid:
            self._drop("_lock_conn")
            raise LeaseLost("the server session changed, so the lock is gone", stop_now=True)
        if not mine:
            self._drop("_lock_conn")
            raise LeaseLost("the server no longer grants the lock to this session", stop_now=True)
        self._renew_beacon(held)
        if held.unflushed is not None and self._run("_lock_conn", FLUSHED, (held.unflushed,))[0]:
            held.unflushed = None
        return Lease(
            lease.name, lease.token, lease.fencing_token, sent + self.ttl, ready=held.ready
        )

    def _renew_beacon(self, held: Held) -> None:
        """Keep the beacon session alive (it has the same idle timeout), and take the
        beacon once a previous holder has let it go."""
        if self._beacon_connection():
            held.beacon_held = False  # a new session holds nothing
        if held.beacon_held:
            self._run("_beacon_conn", "SELECT 1")
        else:
            (held.beacon_held,) = self._run(
                "_beacon_conn", "SELECT pg_try_advisory_lock(%s)", (held.beacon,)
            )

    @serialized
    def release(self, lease: Lease) -> None:
        held = self._held.get(lease.name)
        if held is None or held.token != lease.token:
            return
        # The beacon goes first: a newcomer that finds it held would wait for nothing.
        if held.beacon_held and self._beacon_conn is not None:
            self._drop("_beacon_conn")
        del self._held[lease.name]
        try:
            # Announced before the unlock, so the next holder sees it when granted.
            self._run("_lock_conn", "SELECT pg_notify(%s, 'released')", (channel(held.key),))
            self._run("_lock_conn", "SELECT pg_advisory_unlock(%s)", (held.key,))
        except BackendUnavailable:
            self._drop("_lock_conn")  # closing the session releases the lock too
            raise

    @serialized
    def forget(self, lease: Lease) -> None:
        if not self._held:  # the child of the lost lease is reaped: the beacon can go
            self._drop("_beacon_conn")

    @serialized
    def holder(self, name: str) -> HolderInfo | None:
        key, _ = self.keys(name)
        self._lock_connection()
        row = self._run("_lock_conn", LOCKED_BY, key_parts(key))
        if row is None:
            return None
        pid, app, host, started = row
        # A SQL_ASCII database gives text as bytes.
        app, host = (v.decode(errors="replace") if isinstance(v, bytes) else v for v in (app, host))
        parts = (app or "").split(" ", 2)
        token = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        node = parts[2] if token is not None else f"backend pid {pid}"
        return HolderInfo(
            node_id=node, host=host or "local", pid=pid, since=started or 0.0, fencing_token=token
        )

    @serialized
    def wait(self, name: str, timeout: float) -> None:
        """Block in pg_advisory_lock until the lock is ours or `timeout` passes."""
        if name in self._granted or name in self._held:
            return
        key, _ = self.keys(name)
        conn = self._lock_connection()
        self._listen(key)
        try:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true),"
                    " set_config('statement_timeout', '0', true)",
                    (str(max(1, int(timeout * 1000))),),
                )
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            return
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._drop("_lock_conn")
            raise self._translate(exc) from exc
        self._granted.add(name)

    def watch_fd(self) -> int | None:
        if not self._held or self._lock_conn is None or self._lock_conn.closed:
            return None
        try:
            return int(self._lock_conn.fileno())
        except psycopg.Error:
            return None

    def close(self) -> None:
        self._drop("_beacon_conn")
        self._drop("_lock_conn")


def create(config: Config) -> Backend:
    conninfo = config.url or os.environ.get("DATABASE_URL") or ""
    try:
        psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError(
            f"malformed postgres URL {redact_conninfo(conninfo)!r}: "
            f"{scrub(first_line(exc), conninfo)}"
        ) from exc
    if "://" in conninfo and not conninfo.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"postgres URL must start with postgresql:// or postgres://, "
            f"got {redact_conninfo(conninfo)!r}"
        )
    check_ports(conninfo)
    if config.ttl > MAX_TTL:
        raise ConfigError(
            f"--ttl must be at most {MAX_TTL:g} seconds with the postgres backend (TCP "
            f"keepalives every ttl/3, at most 32767 s on Linux), got {config.ttl:g}"
        )
    if not (config.node_id.isascii() and config.node_id.isprintable()):
        raise ConfigError(
            f"--node-id must be printable ASCII with the postgres backend (it is shown "
            f"through application_name), got {config.node_id!r}"
        )
    return PostgresBackend(
        conninfo, config.ttl, config.call_timeout, config.key_prefix, config.node_id
    )
