"""Redis Sentinel: the URL form, a lease bound to the primary it was taken on, WAIT 1
before a lock counts, the Celery store, and a short round of the Sentinel fault bench
(a primary, one replica and three sentinels on loopback, started here)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator import redact
from coordinator.backends.base import HolderInfo, Lease
from coordinator.backends.redis_sentinel import SentinelBackend, parse_sentinel_url
from coordinator.errors import BackendUnavailable, ConfigError, LeaseLost
from tests.cluster import run_cli, wait_until
from tests.faults.__main__ import verdict
from tests.faults.sentinel import FAULTS, run_sentinel
from tests.servers import Passwords, SentinelGroup, TlsFiles
from tests.store import Store

SECRET = "s3cr3t-pa55"


def servers_of_our_own() -> None:
    if os.environ.get("COORDINATOR_TEST_REDIS_URL"):
        pytest.skip("needs redis servers and sentinels of its own to fail over")


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    servers_of_our_own()
    # Full syncs at once, not after Redis's default 5 s: the tests wait for every
    # resync (the fault runner keeps the default, see docs/safety.md).
    made = SentinelGroup(tmp_path_factory.mktemp("sentinel"), sync_delay=0)
    yield made
    made.close()


@pytest.fixture
def ready(group: SentinelGroup) -> SentinelGroup:
    """The group whole again after an earlier test's failover."""
    group.wait_ready()
    return group


def backend(group: SentinelGroup, prefix: str = "t/") -> SentinelBackend:
    made = Store("redis", group.url, prefix).backend("x")
    assert isinstance(made, SentinelBackend)
    return made


def renewed_with_a_replica(held: SentinelBackend, lease: Lease, within: float = 10) -> Lease:
    """Renew until a replica acknowledges (a resumed replica first works through what
    it missed)."""
    end = time.monotonic() + within
    while True:
        try:
            lease = held.renew(lease)
            if lease.ready:
                return lease
        except BackendUnavailable:
            pass
        assert time.monotonic() < end, "no replica acknowledged a renewal"
        time.sleep(0.05)


# -- the URL ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "data_url", "auth"),
    [
        (
            "redis+sentinel://s1:26380,s2,[::1]:26381/beat",
            [("s1", 26380), ("s2", 26379), ("::1", 26381)],
            "beat",
            "redis://localhost/0",
            {},
        ),
        (
            f"redis+sentinel://app:{SECRET}@s1/beat%20one/5?sentinel_password=pw&client_name=c",
            [("s1", 26379)],
            "beat one",
            f"redis://app:{SECRET}@localhost/5?client_name=c",
            {"password": "pw"},
        ),
        (
            "rediss+sentinel://s1:1/m?ssl_ca_certs=/ca.pem&sentinel_username=u",
            [("s1", 1)],
            "m",
            "rediss://localhost/0?ssl_ca_certs=%2Fca.pem",
            {"username": "u"},
        ),
    ],
)
def test_sentinel_url_forms(
    url: str,
    sentinels: list[tuple[str, int]],
    service: str,
    data_url: str,
    auth: dict[str, str],
) -> None:
    spec = parse_sentinel_url(url)
    assert (spec.sentinels, spec.service, spec.data_url, spec.sentinel_auth) == (
        sentinels,
        service,
        data_url,
        auth,
    )
    assert spec.tls == url.startswith("rediss")


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        (f"redis+sentinel://:{SECRET}@/beat", "no sentinel given"),
        (f"redis+sentinel://:{SECRET}@s1:26379", "no service name"),
        (f"redis+sentinel://:{SECRET}@s1:26379/", "no service name"),
        (f"redis+sentinel://:{SECRET}@s1:0/beat", "port out of range"),
        (f"redis+sentinel://:{SECRET}@s1:99999/beat", "port out of range"),
        (f"redis+sentinel://:{SECRET}@s1:x/beat", "is not host or host:port"),
        (f"redis+sentinel://:{SECRET}@s1,,s2/beat", "is not host or host:port"),
        (f"redis+sentinel://:{SECRET}@s1/beat/x", "/service/<database number>"),
        (f"redis+sentinel://:{SECRET}@s1/beat/0/1", "/service/<database number>"),
        (f"redis+sentinel://:{SECRET}@s1/beat?foo=bar", "unknown option 'foo'"),
        (f"redis+sentinel://:{SECRET}@s1/beat?protocol=9", "protocol must be"),
        (f"redis+sentinel://:{SECRET}@[::1/beat", "malformed"),
    ],
)
def test_bad_sentinel_urls_are_one_clear_error(url: str, needle: str) -> None:
    redact.register_url(url)
    try:
        with pytest.raises(ConfigError) as caught:
            Store("redis", url, "t/").backend("x")
    finally:
        redact.reset()
    message = str(caught.value)
    assert needle in message and "malformed redis sentinel URL" in message, message
    assert SECRET not in message and "\n" not in message


def test_a_bad_sentinel_url_exits_2_with_one_line() -> None:
    url = f"redis+sentinel://app:{SECRET}@127.0.0.1:1/beat/x?sentinel_password={SECRET}2"
    result = run_cli("-b", "redis", "--url", url, "--", "true")
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("coordinator: error:")]
    assert result.returncode == 2 and len(errors) == 1, output
    assert "/service/<database number>" in errors[0] and SECRET not in output, output


def test_sentinel_passwords_are_redacted() -> None:
    url = f"rediss+sentinel://app:{SECRET}@s1:1,s2:2/beat/0?sentinel_password={SECRET}x"
    shown = redact.redact(f"cannot reach {url}")
    assert SECRET not in shown and "s1:1,s2:2/beat/0" in shown, shown
    assert sorted(set(redact.url_secrets(url))) == [SECRET, f"{SECRET}x"]


# -- leases on a replicated primary ---------------------------------------------


def test_a_failover_ends_the_lease_taken_on_the_old_primary(ready: SentinelGroup) -> None:
    """The holder's next renewal after SENTINEL FAILOVER is LeaseLost, although the old
    primary still accepts writes; the lock reached the replica before it counted, so
    the new primary refuses newcomers until it expires; a newcomer's lease there counts
    only once the new primary has a replica again."""
    old, new = backend(ready), backend(ready)
    try:
        lease = old.acquire("x", HolderInfo(node_id="old"))
        assert lease is not None and lease.ready
        lease = old.renew(lease)
        assert lease.ready
        status = run_cli(
            "status", "-b", "redis", "--url", ready.url, "--key-prefix", "t/", "--name", "x"
        )
        assert status.returncode == 0 and "old" in status.stdout, status
        lease = old.renew(lease)  # a whole ttl for what follows
        old_primary = ready.current_primary()
        ready.ask("SENTINEL", "FAILOVER", ready.SERVICE)
        started = time.monotonic()
        wait_until(lambda: ready.primary_port() not in (old_primary.port, None), timeout=30)
        assert old_primary.role() == "master"  # still writable: Sentinel demotes it later
        with pytest.raises(LeaseLost, match="Sentinel now names"):
            old.renew(lease)
        # The lock was replicated before it counted: the new primary still has it.
        holder = new.holder("x")
        assert holder is not None and holder.node_id == "old"
        assert new.acquire("x", HolderInfo(node_id="new")) is None
        taken = None
        while taken is None:
            assert time.monotonic() - started < 10, "the replicated lock never expired"
            taken = new.acquire("x", HolderInfo(node_id="new"))
            time.sleep(0.05)
        # No replica yet (the old primary is demoted later): not counted.
        waited = 0.0
        while not taken.ready:
            waited = time.monotonic() - started
            assert waited < 40, "the new primary got no replica"
            taken = new.renew(taken)
        print(
            f"sentinel failover: the new primary's lock counted {waited:.1f}s after "
            f"SENTINEL FAILOVER (the old primary demoted and synced)"
        )
        assert old_primary.role() == "slave"
        new.release(taken)
        # A sentinel that still named the old primary, now a replica: its role tells.
        pool: Any = old.client.connection_pool
        stale = lambda: ("127.0.0.1", old_primary.port)  # noqa: E731
        pool.get_master_address = pool.proxy.get_master_address = stale
        with pytest.raises(LeaseLost, match=r"is a slave, not the primary|demoted to a replica"):
            old.renew(lease)
    finally:
        old.close()
        new.close()


def test_a_lock_no_replica_acknowledged_does_not_count(ready: SentinelGroup) -> None:
    replica = next(s for s in ready.servers if s.port != ready.primary_port())
    holder, newcomer = backend(ready), backend(ready)
    assert replica.process is not None
    try:
        lease = holder.acquire("a", HolderInfo(node_id="holder"))
        assert lease is not None and lease.ready
        replica.process.send_signal(signal.SIGSTOP)  # connected, but acknowledges nothing
        try:
            with pytest.raises(BackendUnavailable, match="no replica acknowledged the renewal"):
                holder.renew(lease)
            other = newcomer.acquire("b", HolderInfo(node_id="newcomer"))
            assert other is not None and not other.ready
            other = newcomer.renew(other)
            assert not other.ready
        finally:
            replica.process.send_signal(signal.SIGCONT)
        other = renewed_with_a_replica(newcomer, other)
        lease = renewed_with_a_replica(holder, lease)
        holder.release(lease)
        newcomer.release(other)
    finally:
        holder.close()
        newcomer.close()


def test_a_primary_restarted_before_sentinel_noticed_ends_the_lease(
    ready: SentinelGroup,
) -> None:
    """Sentinel names the same address, but the server restarted empty (its replica
    resyncs from it and loses the lock too): the replication id tells, the lease is
    lost, and the newcomer finds no record of the lock, so it waits the safety delay."""
    held, newcomer = backend(ready), backend(ready)
    try:
        lease = held.acquire("r", HolderInfo(node_id="held"))
        assert lease is not None and lease.ready
        primary = ready.current_primary()
        primary.stop(signal.SIGKILL)
        primary.start()  # well within down-after-milliseconds: no failover
        end = time.monotonic() + 10
        while True:
            try:
                held.renew(lease)
                raise AssertionError("renewed on a primary that restarted empty")
            except LeaseLost as exc:
                assert "replication id changed" in str(exc), exc
                break
            except BackendUnavailable:  # the old connection, or the primary loading
                assert time.monotonic() < end
                time.sleep(0.1)
        taken = None
        while taken is None:
            assert time.monotonic() < end
            try:
                taken = newcomer.acquire("r", HolderInfo(node_id="newcomer"))
            except BackendUnavailable:
                time.sleep(0.1)
        assert taken.state_reset, taken
        newcomer.release(taken)
    finally:
        held.close()
        newcomer.close()


def test_the_celery_store_works_with_a_sentinel_url(ready: SentinelGroup) -> None:
    """The schedule's writes go to the primary Sentinel names, and count only once a
    replica has them, like the lock's."""
    import redis

    from coordinator.celery.store import EntryState, Settings, open_store

    settings = Settings("redis", ready.url, "celery/", "beat", "n1", 7)
    store = open_store(settings)
    try:
        entries = {"every-minute": EntryState(1_000_000, 3)}
        version = store.write(7, entries, store.read().version)
        snapshot = store.read()
        assert (snapshot.entries, snapshot.version, snapshot.fence) == (entries, version, 7)
        replica = next(s for s in ready.servers if s.port != ready.primary_port())
        with redis.Redis(port=replica.port) as direct:
            assert direct.hget("celery/{beat}/celery", "fence") == b"7"
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(BackendUnavailable, match="no replica acknowledged"):
                store.write(8, entries, version)
        finally:
            replica.process.send_signal(signal.SIGCONT)
    finally:
        store.close()


# -- the fault bench ------------------------------------------------------------


def test_the_sentinel_fault_bench_short_round(
    group: SentinelGroup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One round of each fault: the primary killed, and SENTINEL FAILOVER, while a lease
    is held by one of three supervisors: no overlap, and a child runs again."""
    seed = random.randrange(1 << 32)
    text, summaries = run_sentinel(list(FAULTS), 1, seed, tmp_path, group)
    with capsys.disabled():
        print(f"\n{text}")
    assert [s.fault for s in summaries] == list(FAULTS), text
    assert all(verdict(s) == "ok" for s in summaries), text


def test_rediss_sentinel_verifies_certificates(tmp_path: Path) -> None:
    """TLS to the sentinels and the data nodes (client certificates required by all),
    each with a password of its own; a CA that signed nothing they present, or a wrong
    sentinel password, is one line and exit 3, not a retry loop."""
    from tests.certs import make_pki

    servers_of_our_own()
    pki = make_pki(tmp_path / "pki")
    made = SentinelGroup(
        tmp_path,
        tls=TlsFiles(pki.ca, pki.server_cert, pki.server_key),
        passwords=Passwords(data=SECRET, sentinel=f"{SECRET}-s"),
        sync_delay=0,
    )
    try:
        assert made.url.startswith("rediss+sentinel://")
        held = backend(made)
        try:
            lease = held.acquire("x", HolderInfo(node_id="tls"))
            assert lease is not None and lease.ready
            assert held.renew(lease).ready
            held.release(lease)
        finally:
            held.close()
        wrong = made.url.replace(f"ssl_ca_certs={pki.ca}", f"ssl_ca_certs={pki.other_ca}")
        result = run_cli("-b", "redis", "--url", wrong, "--", "true")
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("coordinator: error:")]
        assert result.returncode == 3 and len(errors) == 1, output
        assert "TLS certificate verification failed" in errors[0], output
        assert SECRET not in output, output
        wrong = made.url.replace(f"sentinel_password={SECRET}-s", "sentinel_password=nope")
        result = run_cli("-b", "redis", "--url", wrong, "--", "true")
        output = result.stdout + result.stderr
        errors = [line for line in output.splitlines() if line.startswith("coordinator: error:")]
        assert result.returncode == 3 and len(errors) == 1, output
        assert "refused us" in errors[0] and SECRET not in output, output
    finally:
        made.close()
