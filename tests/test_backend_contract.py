"""One behaviour suite, run against every backend on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.errors import LeaseLost
from tests.conftest import Store

Make = Callable[..., Backend]


def info(node: str = "node-a") -> HolderInfo:
    return HolderInfo(node_id=node)


def test_acquire_gives_a_lease_with_a_deadline_from_send_time(
    make_backend: Make, store: Store
) -> None:
    backend = make_backend()
    before = time.monotonic()
    lease = backend.acquire("x", info())
    after = time.monotonic()
    assert lease is not None
    assert lease.name == "x"
    # The deadline counts from before the request was sent, never from the reply.
    assert before + store.ttl <= lease.deadline <= after + store.ttl
    backend.release(lease)


def test_second_contender_gets_nothing(make_backend: Make) -> None:
    first, second = make_backend(), make_backend()
    lease = first.acquire("x", info("a"))
    assert lease is not None
    assert second.acquire("x", info("b")) is None
    assert first.acquire("x", info("a")) is None  # not reentrant either
    first.release(lease)


def test_holder_reports_who_holds_it(make_backend: Make) -> None:
    backend = make_backend()
    assert backend.holder("x") is None
    lease = backend.acquire("x", info("node-a"))
    assert lease is not None
    holder = make_backend().holder("x")
    assert holder is not None
    assert holder.node_id == "node-a"
    assert holder.fencing_token == lease.fencing_token
    backend.release(lease)
    assert backend.holder("x") is None


def test_a_refused_contender_learns_who_holds_it(make_backend: Make, store: Store) -> None:
    holder, standby = make_backend(), make_backend()
    lease = holder.acquire("x", info("node-a"))
    assert lease is not None
    if store.kind == "redis":
        import redis

        client = redis.Redis.from_url(store.url)
        reads = client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    assert standby.acquire("x", info("node-b")) is None
    seen = standby.refused_by("x")
    assert seen is not None
    assert (seen.node_id, seen.fencing_token) == ("node-a", lease.fencing_token)
    if store.kind == "redis":  # the refusal carried the holder: no second read
        assert client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0) == reads
        client.close()
    holder.release(lease)


def test_renew_extends_the_deadline(make_backend: Make) -> None:
    backend = make_backend()
    lease = backend.acquire("x", info())
    assert lease is not None
    time.sleep(0.2)
    renewed = backend.renew(lease)
    assert renewed.deadline > lease.deadline + 0.1
    assert renewed.fencing_token == lease.fencing_token
    # Still exclusive after renewal.
    assert make_backend().acquire("x", info("b")) is None
    backend.release(renewed)


def test_renew_keeps_the_lease_alive_past_its_first_ttl(make_backend: Make, store: Store) -> None:
    ttl = max(1.5, store.ttl if store.kind == "consul" else 0)
    backend = make_backend(ttl=ttl, grace=0.1)
    lease = backend.acquire("x", info())
    assert lease is not None
    for _ in range(4):
        time.sleep(ttl / 3)
        lease = backend.renew(lease)
    assert make_backend(ttl=ttl, grace=0.1).acquire("x", info("b")) is None
    backend.release(lease)


def test_renew_after_out_of_band_deletion_says_lost(make_backend: Make, store: Store) -> None:
    backend = make_backend()
    lease = backend.acquire("x", info())
    assert lease is not None
    store.delete_lock("x")
    with pytest.raises(LeaseLost):
        backend.renew(lease)


def test_deleted_lock_is_reported_as_possible_state_loss(make_backend: Make, store: Store) -> None:
    backend = make_backend()
    lease = backend.acquire("x", info())
    assert lease is not None
    store.delete_lock("x")
    newcomer = make_backend()
    start = time.monotonic()
    while (fresh := newcomer.acquire("x", info("b"))) is None:
        assert time.monotonic() - start < store.ttl + 3
        time.sleep(0.2)
    waited = time.monotonic() - start
    # The old holder may not have noticed yet: either the backend itself held the
    # newcomer off for as long as the old holder needs to stop its child (Consul's
    # lock-delay), or the newcomer is told to wait before starting its own.
    cfg = store.config()
    notice = cfg.renew_interval + cfg.call_timeout
    if store.kind == "consul":  # its holder watches its key: it learns at once
        notice = cfg.call_timeout + cfg.margin - 0.2  # the lock-delay began before `start`
    assert fresh.state_reset or waited >= notice + cfg.grace
    assert fresh.fencing_token > lease.fencing_token
    newcomer.release(fresh)


def test_release_is_safe_to_repeat_and_frees_the_lock(make_backend: Make) -> None:
    first, second = make_backend(), make_backend()
    lease = first.acquire("x", info("a"))
    assert lease is not None
    first.release(lease)
    first.release(lease)
    again = second.acquire("x", info("b"))
    assert again is not None
    assert not again.state_reset
    # A stale release must not free someone else's lease.
    first.release(lease)
    assert first.acquire("x", info("a")) is None
    second.release(again)


def test_stale_holder_cannot_renew_a_newer_lease(make_backend: Make) -> None:
    first, second = make_backend(), make_backend()
    old = first.acquire("x", info("a"))
    assert old is not None
    first.release(old)
    new = second.acquire("x", info("b"))
    assert new is not None
    with pytest.raises(LeaseLost):
        first.renew(old)
    second.release(new)


def test_fencing_tokens_strictly_increase(make_backend: Make) -> None:
    backends = [make_backend(), make_backend()]
    tokens = []
    for i in range(6):
        backend = backends[i % 2]
        lease = backend.acquire("x", info(f"n{i}"))
        assert lease is not None
        tokens.append(lease.fencing_token)
        backend.release(lease)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == len(tokens)


def test_names_do_not_block_each_other(make_backend: Make) -> None:
    backend = make_backend()
    a = backend.acquire("alpha", info())
    b = make_backend().acquire("beta", info())
    assert a is not None and b is not None


def test_wait_returns_early_on_release(make_backend: Make) -> None:
    holder, standby = make_backend(ttl=30.0), make_backend(ttl=30.0)
    lease = holder.acquire("x", info("a"))
    assert lease is not None
    assert standby.acquire("x", info("b")) is None
    standby.wait("x", 0.05)  # lets a backend set up its notification first
    threading.Timer(0.3, holder.release, args=(lease,)).start()
    start = time.monotonic()
    standby.wait("x", 10.0)
    waited = time.monotonic() - start
    assert 0.2 <= waited < 1.5, waited
    assert standby.acquire("x", info("b")) is not None


def test_wait_gives_up_at_its_timeout_while_held(make_backend: Make) -> None:
    holder, standby = make_backend(ttl=30.0), make_backend(ttl=30.0)
    lease = holder.acquire("x", info("a"))
    assert lease is not None
    assert standby.acquire("x", info("b")) is None
    standby.wait("x", 0.05)
    start = time.monotonic()
    standby.wait("x", 0.5)
    assert 0.4 <= time.monotonic() - start < 2.0
    holder.release(lease)


def test_fencing_tokens_increase_whatever_the_nodes_clocks_say(
    make_backend: Make, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes whose clocks disagree by ten minutes either way take turns, through
    graceful releases and a lock removed behind the holder's back (lost state): each
    token is above every earlier one."""
    real_time, real_time_ns = time.time, time.time_ns

    def skewed(node: Backend, seconds: float) -> Lease:
        monkeypatch.setattr(time, "time", lambda: real_time() + seconds)
        monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + int(seconds * 1e9))
        try:
            start = real_time()
            while (lease := node.acquire("x", info(f"skew{seconds:+g}"))) is None:
                assert real_time() - start < store.ttl * 3 + 15, "never acquired"
                time.sleep(0.1)
            return lease
        finally:
            monkeypatch.undo()

    ahead, behind = make_backend(), make_backend()
    tokens = []
    for step in range(6):
        node, skew = (ahead, 600.0) if step % 2 == 0 else (behind, -600.0)
        lease = skewed(node, skew)
        tokens.append(lease.fencing_token)
        if step in (1, 4):
            store.delete_lock("x")  # lost: the next holder must still go up
            with pytest.raises(LeaseLost):  # as the supervisor learns it
                node.renew(lease)
            node.release(lease)
        else:
            node.release(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
