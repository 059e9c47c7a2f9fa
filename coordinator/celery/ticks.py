"""Which tick of an entry is due: pure functions of the schedule, the last tick and now.

A tick is named by its nominal time (when it fell due, not when it was sent), so an
interval entry keeps its phase across handoffs and the milliseconds of beat's loop do
not add up. When ticks were missed (a failover, a beat that was down), one runs at
takeover, not one per missed tick: a crontab's latest matching minute, or an interval
entry's tick now, from which its interval then counts. A crontab thus runs once per
matching minute, and an interval entry never twice within one interval.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from celery.schedules import crontab, schedule

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# An interval tick sent later than this (or a quarter interval) was missed, not just
# sent with the loop's usual delay of a few milliseconds.
LATE = timedelta(seconds=1)
US = timedelta(microseconds=1)
# Bounds the walk over missed crontab ticks (a minute-wise crontab over a week is 10,080).
MAX_STEPS = 100_000
# How far back to look for the latest missed crontab tick before walking from the last.
LOOKBACK = (
    timedelta(minutes=2),
    timedelta(hours=2),
    timedelta(days=2),
    timedelta(days=32),
    timedelta(days=400),
)


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def to_us(moment: datetime) -> int:
    return (aware(moment) - EPOCH) // US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def due_tick(sched: Any, last: datetime, now: datetime) -> tuple[datetime | None, float]:
    """(the tick to run now or None, seconds until the next one falls due)."""
    last, now = aware(last), aware(now)
    if type(sched) is schedule and not sched.relative and sched.run_every > timedelta(0):
        return _interval(sched.run_every, last, now)
    if isinstance(sched, crontab):
        return _crontab(sched, last, now)
    # Another schedule type (solar, a custom one): its own is_due, named by now.
    is_due, next_in = sched.is_due(last)
    return (now if is_due else None), float(next_in)


def _interval(every: timedelta, last: datetime, now: datetime) -> tuple[datetime | None, float]:
    due = last + every
    if due > now:
        return None, (due - now).total_seconds()
    tick = due + ((now - due) // every) * every
    if now - tick > min(LATE, every / 4):
        # A missed tick (a failover, a beat that was down): it runs once, now, and the
        # interval counts from now, so the next run is a full interval later, never
        # a moment after this one.
        tick = now
    return tick, (tick + every - now).total_seconds()


def _crontab(sched: crontab, last: datetime, now: datetime) -> tuple[datetime | None, float]:
    def after(moment: datetime) -> datetime:
        start, delta, _ = sched.remaining_delta(moment)
        return aware(start + delta)

    due = after(last)
    if due > now:
        return None, (due - now).total_seconds()
    tick = due
    for back in LOOKBACK:  # skip ahead over a long outage instead of walking it
        probe = now - back
        if probe > tick and (found := after(probe)) <= now:
            tick = found
            break
    for _ in range(MAX_STEPS):
        following = after(tick)
        if following > now:
            return tick, (following - now).total_seconds()
        tick = following
    return tick, 0.0
