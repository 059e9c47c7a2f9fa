"""Fault benches for production topologies: a PostgreSQL primary with a streaming
standby (failover by promotion), PostgreSQL through PgBouncer in session pooling, and
TLS with verification on Redis, PostgreSQL and Consul.

Each node reaches its servers through proxies of its own, as on the plain benches,
so the usual faults (kill-9, sigterm, blackhole, ...) apply unchanged. The servers
are not made to age first: a supervisor that finds a server younger than the ttl
waits the safety delay before the first child, so no fault meets a young server.
"""

from __future__ import annotations

import random
import re
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.certs import TlsConsulServer, TlsPostgresServer, TlsRedisServer, make_pki
from tests.cluster import Record, cli_env
from tests.faults.benches import BenchSpec
from tests.faults.check import Round
from tests.faults.faults import Fault, _takeover, slow_stop
from tests.faults.harness import Bench, Node
from tests.faults.proxy import Proxies
from tests.pooler import PgBouncer
from tests.replication import StandbyServer
from tests.servers import PostgresServer, ServerProcess, settled
from tests.store import Store

# What a supervisor logs when it waits as for lost state because of a promotion
# (coordinator/supervisor.py, coordinator/backends/postgres.py).
PROMOTED_WAIT = re.compile(
    r"the server is a standby promoted .*so an earlier holder could still be running: "
    r"waiting the safety delay"
)


def prefix() -> str:
    return f"faults-{uuid.uuid4().hex[:8]}/"


class OwnedBench(Bench):
    """A bench that stops the servers it started, and may add to the environment."""

    def __init__(
        self,
        store: Store,
        server: ServerProcess | None,
        tmp: Path,
        owned: list[ServerProcess],
        env: dict[str, str] | None = None,
    ) -> None:
        self.owned, self.env = owned, env or {}
        super().__init__(store, server, tmp)

    def environment(self) -> dict[str, str]:
        return cli_env(self.env)

    def close(self) -> None:
        try:
            super().close()
        finally:
            for server in reversed(self.owned):
                server.close()


def closing_on_error(owned: list[ServerProcess], make: Callable[[], Bench]) -> Bench:
    try:
        return make()
    except BaseException:
        for server in reversed(owned):
            server.close()
        raise


# -- PostgreSQL: a primary and a streaming standby --------------------------------------


def multi_host(ports: list[int]) -> str:
    """Every server in one URL; libpq takes the first that accepts writes."""
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    user, password, database = PostgresServer.USER, PostgresServer.PASSWORD, PostgresServer.DATABASE
    return f"postgresql://{user}:{password}@{hosts}/{database}?target_session_attrs=read-write"


class StandbyBench(Bench):
    """Supervisors on a multi-host URL (primary and standby, each node through a proxy
    per server). A failover stops the primary at once and promotes the standby; the
    old primary then comes back as a standby of the new one, on its old port, so the
    URL stays the same and the roles swap at every failover."""

    def __init__(self, tmp: Path) -> None:
        primary = PostgresServer()
        self.pair: list[PostgresServer] = [primary]  # [primary, standby]
        try:
            self.pair.append(StandbyServer(primary))
            store = Store("postgres", multi_host([s.port for s in self.pair]), prefix())
            super().__init__(store, None, tmp)
        except BaseException:
            self.close_servers()
            raise

    def _node(self, index: int) -> Node:
        proxies = Proxies([server.port for server in self.pair])
        return Node(index, multi_host(proxies.ports), proxies)

    def settle_standby(self) -> None:
        """A standby younger than the ttl would make the new holder wait for its young
        postmaster, whether or not the promotion is detected: wait until it is older."""
        settled(self.pair[1], self.ttl + 1)

    def fail_over(self) -> None:
        old, new = self.pair
        old.stop(signal.SIGQUIT)  # immediate shutdown, as a crash
        assert isinstance(new, StandbyServer)
        new.promote()
        self.pair = [new, old]

    def rebuild_standby(self) -> None:
        """The stopped old primary, again: a base backup of the new one, on its port."""
        primary, old = self.pair
        old.close()
        self.pair = [primary, StandbyServer(primary, port=old.port)]

    def close_servers(self) -> None:
        for server in reversed(self.pair):
            server.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.close_servers()


def log_sizes(bench: Bench) -> dict[int, int]:
    sizes = {}
    for node in bench.nodes:
        path = bench.tmp / f"node{node.index}.log"
        sizes[node.index] = path.stat().st_size if path.exists() else 0
    return sizes


def logged_since(bench: Bench, pid: int, sizes: dict[int, int]) -> str:
    """What the supervisor of child `pid` logged since `sizes` were taken."""
    starts = [e for e in bench.events() if e.pid == pid and e.event == "start"]
    for node in bench.nodes:
        if starts and node.process is not None and node.process.pid == starts[0].ppid:
            with open(bench.tmp / f"node{node.index}.log", "rb") as log:
                log.seek(sizes.get(node.index, 0))
                return log.read().decode(errors="replace")
    return ""


def promotion(cut_off: bool) -> Fault:
    """The primary stops at once and the standby is promoted while a lease is held;
    with `cut_off`, the holder's path stalls first (no reset, no reply), so it learns
    nothing and runs its child until its lease ends. The new holder must wait as for
    lost state (advisory locks are not replicated)."""

    def fault(
        bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
    ) -> None:
        assert isinstance(bench, StandbyBench) and node.proxy is not None
        bench.settle_standby()  # before the fault: not part of the takeover
        sizes = log_sizes(bench)
        if cut_off:
            node.proxy.stall()
        since = time.monotonic()
        try:
            bench.fail_over()
            new = _takeover(bench, known, since, r)
            if new is not None:
                bench.wait_start(new.pid, bench.takeover_bound())
            if cut_off:
                time.sleep(rng.uniform(0, 1))
        finally:
            node.proxy.heal()
        if new is not None and not PROMOTED_WAIT.search(logged_since(bench, new.pid, sizes)):
            r.problems.append("the new holder did not wait the safety delay for the promotion")
        bench.rebuild_standby()

    return fault


# -- PostgreSQL through PgBouncer (session pooling) -------------------------------------


class PoolerBench(OwnedBench):
    def __init__(self, tmp: Path, server: PostgresServer, pooler: PgBouncer) -> None:
        self.pooler = pooler
        store = Store("postgres", pooler.url_for("session"), prefix())
        super().__init__(store, server, tmp, [server, pooler])


def pgbouncer(tmp: Path) -> Bench:
    server = PostgresServer()
    owned: list[ServerProcess] = [server]

    def make() -> Bench:
        # PgBouncer retries a failed server login after 15 s by default, which would
        # dominate the server-restart takeover (docs/deployment.md); 1 s keeps the
        # supervisors retrying through it, where an abandoned call once broke one.
        owned.append(pooler := PgBouncer(server, login_retry=1))
        return PoolerBench(tmp, server, pooler)

    return closing_on_error(owned, make)


def pooler_restart(
    bench: Bench, node: Node, child: Record, known: set[int], r: Round, rng: random.Random
) -> None:
    """PgBouncer killed (-9) and started again: every session through it ends at once,
    the holder's lock and beacon with them; child slow to stop."""
    assert isinstance(bench, PoolerBench)
    with slow_stop(bench, 0.7):
        since = time.monotonic()
        bench.pooler.restart()
        _takeover(bench, known, since, r)


# -- TLS with verification ---------------------------------------------------------------


def tls_redis(tmp: Path) -> Bench:
    server = TlsRedisServer(tmp, make_pki(tmp / "pki"))
    store = Store("redis", server.url, prefix())
    return closing_on_error([server], lambda: OwnedBench(store, None, tmp, [server]))


def tls_postgres(tmp: Path) -> Bench:
    server = TlsPostgresServer(make_pki(tmp / "pki"))
    store = Store("postgres", server.url, prefix())
    return closing_on_error([server], lambda: OwnedBench(store, None, tmp, [server]))


def tls_consul(tmp: Path) -> Bench:
    (tmp / "consul").mkdir()
    server = TlsConsulServer(tmp / "consul", make_pki(tmp / "pki"))
    store = Store("consul", server.url, prefix())
    return closing_on_error([server], lambda: OwnedBench(store, None, tmp, [server], server.env()))


TLS_FAULTS = ("kill-9", "sigterm", "blackhole")

BENCHES = {
    "postgres-standby": BenchSpec(
        make=StandbyBench,
        faults=("kill-9", "sigterm", "blackhole"),
        extra={
            "primary-promoted": promotion(cut_off=False),
            "primary-promoted-cut-off": promotion(cut_off=True),
        },
        quick=("primary-promoted-cut-off",),
        about="PostgreSQL primary and streaming standby, multi-host URL",
    ),
    "postgres-pgbouncer": BenchSpec(
        make=pgbouncer,
        faults=(
            "kill-9",
            "sigterm",
            "blackhole",
            "server-restart",
            "lock-removed",
            "sessions-ended",
            "connections-reset",
        ),
        extra={"pooler-restart": pooler_restart},
        quick=("blackhole",),  # a crash and a handover: tests/test_pgbouncer.py
        about="PostgreSQL through PgBouncer, session pooling",
    ),
    "redis-tls": BenchSpec(
        make=tls_redis, faults=TLS_FAULTS, quick=("blackhole",), about="rediss://, verified"
    ),
    "postgres-tls": BenchSpec(
        make=tls_postgres,
        faults=TLS_FAULTS,
        quick=("blackhole",),
        about="PostgreSQL, sslmode=verify-full",
    ),
    "consul-tls": BenchSpec(
        make=tls_consul,
        faults=TLS_FAULTS,
        quick=("sigterm",),  # a takeover within the ttl; kill-9 and blackhole take ~8 s
        about="Consul over HTTPS with a client certificate",
    ),
}
