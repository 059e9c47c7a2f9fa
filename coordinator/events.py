"""Signals and background calls, delivered to the main loop.

Signal handlers only record the signal number; the wakeup fd makes select() return
so the loop can act. Backend calls run on a worker thread so the loop keeps its own
clock: a call that hangs past its deadline cannot keep the child running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from types import FrameType
from typing import Any, TypeVar

from coordinator.errors import BackendUnavailable

T = TypeVar("T")

log = logging.getLogger("coordinator")

FORWARDED = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
STOPPING = (signal.SIGTERM, signal.SIGINT)


class CallTimeout(BackendUnavailable):
    """A backend call did not answer within its hard timeout."""


class Events:
    """Records signals and wakes the loop; use as a context manager."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1
        self._closed = False
        self._lock = threading.Lock()  # an abandoned call may wake us after close

    def __enter__(self) -> Events:
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        # SIGCONT: a supervisor resumed after a stop checks its lease at once.
        for signum in (*STOPPING, *FORWARDED, signal.SIGCHLD, signal.SIGCONT):
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_fd)
        with self._lock:
            self._closed = True
            os.close(self._read)
            os.close(self._write)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def wake(self) -> None:
        """Called from other threads when a result is ready."""
        # A full pipe means the loop is going to wake anyway.
        with self._lock, contextlib.suppress(BlockingIOError):
            if not self._closed:
                os.write(self._write, b"\0")

    def sleep(self, timeout: float, watch: int | None = None) -> bool:
        """Sleep until a signal arrives, a call finishes, `timeout` passes, or the
        `watch` descriptor turns readable. Returns True in that last case."""
        fds = [self._read] if watch is None else [self._read, watch]
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except (OSError, ValueError):  # the watched socket was closed meanwhile
            ready = [] if watch is None else [watch]
        if self._read in ready:
            try:
                while os.read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass
        return watch is not None and watch in ready

    def take(self) -> list[int]:
        taken = list(self.pending)
        self.pending.clear()
        return taken


class Interrupted(Exception):
    """A stop signal arrived during an interruptible call (a standby's wait)."""


class Caller:
    """Runs backend calls on daemon threads, with a hard timeout.

    A call that overruns is abandoned: its thread finishes on its own and the next call
    gets a fresh thread, so one stuck socket cannot stall the supervisor.
    """

    def __init__(self, events: Events) -> None:
        self.events = events

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        timeout: float,
        interruptible: bool = False,
        late: Callable[[T], object] | None = None,
    ) -> T:
        """Run fn(*args) with a hard timeout. If the call is abandoned (timeout,
        interruption) and then succeeds anyway, `late` gets its result on the worker
        thread: an acquisition that won after we gave up must not stay held."""
        future: Future[T] = Future()
        lock = threading.Lock()
        abandoned = False

        def run() -> None:
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # re-raised in the caller's thread
                result, error = None, exc
            with lock:
                deliver_late = abandoned and error is None and late is not None
                if not abandoned:
                    if error is None:
                        future.set_result(result)  # type: ignore[arg-type]
                    else:
                        future.set_exception(error)
            if deliver_late:
                assert late is not None
                try:
                    late(result)  # type: ignore[arg-type]
                except Exception as exc:  # best effort: the lease expires by itself
                    log.debug("cleaning up after an abandoned call failed: %s", exc)
            self.events.wake()

        threading.Thread(target=run, name="backend-call", daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            with lock:
                if future.done():
                    break
                stop = interruptible and any(s in STOPPING for s in self.events.pending)
                left = deadline - time.monotonic()
                if stop or left <= 0:
                    abandoned = True
            if stop:
                raise Interrupted()
            if left <= 0:
                name = getattr(fn, "__name__", "call")
                raise CallTimeout(f"{name} got no answer within {timeout:.2f}s")
            self.events.sleep(left)
        return future.result()
