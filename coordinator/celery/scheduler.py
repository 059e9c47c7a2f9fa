"""coordinator.celery.Scheduler: Celery beat with its state in coordinator's backend.

At start it reads the schedule's state from the store, takes up entries added to the
app's beat_schedule, drops the state of removed ones, and writes the result with its
fencing token (after which any older holder's write is refused). Each due tick is
claimed in the store before it is sent: the claim records the tick's nominal time, so
a tick is sent at most once across holders, and a holder whose claim is refused
(a newer token wrote) sends nothing more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import beat
from celery.utils.log import get_logger

from coordinator.celery.store import (
    Conflict,
    EntryState,
    Fenced,
    Settings,
    Snapshot,
    Store,
    open_store,
)
from coordinator.celery.ticks import due_tick, from_us, to_us
from coordinator.errors import BackendRejected, BackendUnavailable, ConfigError

log = get_logger(__name__)

RETRY = 1.0  # seconds before trying a store that could not be reached again
EXIT_USAGE = 2  # as coordinator's own usage errors (docs/exit-codes.md)
EXIT_REJECTED = 3  # as coordinator's own "the backend refused us"


@contextlib.contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Hold stop signals for the duration, then deliver them to their usual handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers (beat embedded in a worker: -B)
        return
    caught: list[int] = []
    previous = {n: signal.getsignal(n) for n in signums}
    for n in signums:
        signal.signal(n, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(n, handler if handler is not None else signal.SIG_DFL)
        for n in caught:
            os.kill(os.getpid(), n)


class Scheduler(beat.Scheduler):  # type: ignore[misc]  # celery is untyped
    #: Our writes happen at each claim; nothing is left for Celery's periodic sync.
    sync_every = 3600

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.settings: Settings | None = None
        self.store: Store | None = None
        self._snapshot: Snapshot | None = None
        self._fenced = False
        super().__init__(*args, **kwargs)

    # -- start ------------------------------------------------------------------

    def setup_schedule(self) -> None:
        try:
            self.settings = Settings.from_env()
            self.store = open_store(self.settings)
        except ConfigError as exc:
            print(f"coordinator.celery: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE) from exc
        super().setup_schedule()  # Celery's default entries + the app's beat_schedule
        while True:
            try:
                self._register()
                return
            except Fenced as exc:
                self._lost(exc)
                return
            except BackendRejected as exc:  # credentials or privileges: not for retrying
                print(f"coordinator.celery: error: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_REJECTED) from exc
            except (BackendUnavailable, Conflict) as exc:
                log.warning("coordinator: cannot load the schedule state, retrying: %s", exc)
                time.sleep(RETRY)

    def _register(self) -> None:
        """Merge the stored state with the app's schedule and write it with our token."""
        assert self.store is not None and self.settings is not None
        snapshot = self.store.read()
        if snapshot.fence > self.settings.token:
            raise Fenced(snapshot.fence)
        entries: dict[str, EntryState] = {}
        for name, entry in list(self.schedule.items()):
            state = snapshot.entries.get(name)
            if state is None:  # a new entry: its phase starts now, as in Celery
                state = EntryState(to_us(entry.last_run_at), entry.total_run_count)
                log.info("coordinator: new schedule entry %s", name)
            entries[name] = state
            self.schedule[name] = self._with_state(entry, state)
        for name in sorted(set(snapshot.entries) - set(entries)):
            log.info("coordinator: dropping the state of removed schedule entry %s", name)
        version = self.store.write(self.settings.token, entries, snapshot.version)
        self._snapshot = Snapshot(self.settings.token, entries, version)
        log.info(
            "coordinator: schedule state in %s, fencing token %d, %d entries",
            self.store.describe(),
            self.settings.token,
            len(entries),
        )

    @staticmethod
    def _with_state(entry: Any, state: EntryState) -> Any:
        return entry.__class__(
            **dict(
                entry,
                last_run_at=from_us(state.last_run_us),
                total_run_count=state.total_run_count,
            )
        )

    # -- ticking ----------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send every due entry (each claimed first); returns seconds until the next."""
        if self._fenced:
            return float(self.max_interval)
        wait = float(self.max_interval)
        for name in list(self.schedule):
            entry = self.schedule[name]
            try:
                tick, next_in = due_tick(entry.schedule, entry.last_run_at, self.app.now())
            except Exception:  # one broken entry must not stop the others
                log.exception("coordinator: cannot compute the next run of %s", name)
                continue
            if tick is not None and not self._claim_and_send(entry, to_us(tick)):
                return RETRY if not self._fenced else float(self.max_interval)
            wait = min(wait, next_in)
        return max(wait, 0.0)

    def _claim_and_send(self, entry: Any, tick_us: int) -> bool:
        """False when the claim could not be made (the store is unreachable, or we were
        fenced): nothing was sent."""
        try:
            # A SIGTERM (a graceful handoff) between the claim and the send would lose
            # the tick: it is acted on once the message is out.
            with deferred_signals():
                state, claimed = self._claim(entry.name, tick_us)
                new_entry = self.schedule[entry.name] = self._with_state(entry, state)
                if claimed:
                    self.apply_entry(new_entry, producer=self.producer)
        except Fenced as exc:
            self._lost(exc)
            return False
        except (BackendUnavailable, BackendRejected) as exc:
            log.warning("coordinator: cannot claim %s, not sending it yet: %s", entry.name, exc)
            return False
        if not claimed:
            log.info("coordinator: %s was already sent for this tick by a holder", entry.name)
        return True

    def _claim(self, name: str, tick_us: int) -> tuple[EntryState, bool]:
        """Record `tick_us` as the entry's last tick, unless it already is (or later)."""
        assert self.store is not None and self.settings is not None
        token = self.settings.token
        for _ in range(3):
            snapshot = self._snapshot or self.store.read()
            if snapshot.fence > token:
                raise Fenced(snapshot.fence)
            current = snapshot.entries.get(name)
            if current is not None and current.last_run_us >= tick_us:
                return current, False
            runs = current.total_run_count + 1 if current is not None else 1
            entries = {**snapshot.entries, name: EntryState(tick_us, runs)}
            try:
                version = self.store.write(token, entries, snapshot.version)
            except Conflict:
                self._snapshot = None  # someone else wrote: read again
                continue
            except BackendUnavailable:
                self._snapshot = None  # the write may have landed: read before the next
                raise
            self._snapshot = Snapshot(token, entries, version)
            return entries[name], True
        raise BackendUnavailable("the schedule state kept changing while claiming a tick")

    def _lost(self, exc: Fenced) -> None:
        assert self.settings is not None
        self._fenced = True
        log.error(
            "coordinator: a newer holder (fencing token %d, ours %d) has written the schedule: "
            "this beat lost its lease and sends nothing more",
            exc.newest,
            self.settings.token,
        )

    # -- the rest of Celery's interface -----------------------------------------

    def sync(self) -> None:
        """Nothing to do: each claim was written when it was made."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.store is not None:
                self.store.close()
                self.store = None

    @property
    def info(self) -> str:
        if self.store is None or self.settings is None:
            return "coordinator"
        return f"coordinator: {self.store.describe()} (fencing token {self.settings.token})"
