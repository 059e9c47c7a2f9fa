"""The tick rules of coordinator.celery with a fake clock: pure functions, no servers."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

pytest.importorskip("celery")  # the test extra installs it

from celery.schedules import crontab, schedule

from coordinator.celery.ticks import due_tick, from_us, to_us

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(sched: object, last: datetime, moments: list[datetime]) -> list[datetime]:
    """A beat looking at the schedule at each moment; returns the ticks it sends."""
    sent = []
    for now in moments:
        tick, _ = due_tick(sched, last, now)
        if tick is not None:
            sent.append(tick)
            last = tick
    return sent


def loop(start: float, end: float, step: float = 0.05) -> list[datetime]:
    return [s(start + i * step) for i in range(int((end - start) / step))]


def test_interval_not_due_says_when() -> None:
    tick, wait = due_tick(schedule(timedelta(seconds=5)), s(0), s(3))
    assert tick is None and wait == pytest.approx(2.0)


def test_interval_on_time_keeps_its_phase() -> None:
    """Sent a little late each time, the nominal time is stored: no drift."""
    every = schedule(timedelta(seconds=5))
    sent = run(every, s(0), [s(5.03), s(10.04), s(15.2), s(20.01)])
    assert sent == [s(5), s(10), s(15), s(20)]


def test_interval_missed_ticks_run_once_then_a_full_interval_later() -> None:
    """A takeover 12.5 s after the last tick of a 5 s entry: one run now (not two, for
    the ticks at 5 and 10), and the next one interval after it."""
    every = schedule(timedelta(seconds=5))
    tick, wait = due_tick(every, s(0), s(12.5))
    assert tick == s(12.5) and wait == pytest.approx(5.0)
    sent = run(every, s(0), [s(12.5), *loop(12.6, 30)])
    assert sent[0] == s(12.5)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent)]
    assert all(gap == pytest.approx(5.0, abs=0.06) for gap in gaps), gaps


def test_interval_takeover_before_the_next_tick_waits_for_it() -> None:
    """A node that takes over before the next tick waits for it: the full interval is
    not restarted from the takeover."""
    tick, wait = due_tick(schedule(timedelta(seconds=20)), s(0), s(13))
    assert tick is None and wait == pytest.approx(7.0)


def test_crontab_once_per_matching_minute_with_an_outage() -> None:
    """Every minute for 10 minutes, with no beat from 12:03:30 to 12:06:10: minutes 4
    and 5 are collapsed into one run at takeover (named 12:06, the latest), every other
    minute runs exactly once."""
    cron = crontab(minute="*")
    moments = loop(0.5, 210, 0.5) + loop(370, 600, 0.5)
    sent = run(cron, s(0.2), moments)
    assert sent == [s(60 * m) for m in (1, 2, 3, 6, 7, 8, 9)]


def test_crontab_long_outage_is_one_run() -> None:
    cron = crontab(minute="*/15")
    tick, wait = due_tick(cron, s(0), s(9 * 86400 + 100))
    assert tick == s(9 * 86400)  # the latest quarter hour, once
    assert wait == pytest.approx(800.0)


def test_crontab_not_due() -> None:
    tick, wait = due_tick(crontab(minute="*/5"), s(0), s(125))
    assert tick is None and wait == pytest.approx(175.0)


def test_microsecond_round_trip() -> None:
    moment = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert from_us(to_us(moment)) == moment
    assert to_us(moment.replace(tzinfo=None)) == to_us(moment)  # naive is UTC


def test_stop_signals_wait_for_the_send() -> None:
    """A SIGTERM between claim and send is held until the message is out, then
    delivered to the handler that was there before."""
    import os
    import signal

    from coordinator.celery.scheduler import deferred_signals

    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            assert got == []  # claimed, not yet sent: the handler has not run
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
