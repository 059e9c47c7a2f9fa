"""The supervisor loop: contend -> (safety delay) -> run the child -> stop -> release.

One thread owns every decision. Backend calls run on short-lived threads with a hard
timeout (events.Caller), so the loop keeps its own clock and can always stop the child
on time. Each state change is logged as one sentence.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time

from coordinator.backends.base import Backend, HolderInfo, Lease
from coordinator.child import Child, ChildStartError
from coordinator.config import Config
from coordinator.errors import (
    EXIT_WAIT_TIMEOUT,
    BackendRejected,
    BackendUnavailable,
    LeaseLost,
)
from coordinator.events import FORWARDED, STOPPING, Caller, Events, Interrupted
from coordinator.observe import Observer
from coordinator.states import State
from coordinator.watchdog import Watchdog

log = logging.getLogger("coordinator")

# Sleeping this much longer than planned means the process was stopped or starved.
PAUSE_NOTICE = 1.0
# How often a holder whose backend is not ready for a child yet renews to ask again.
READY_POLL = 0.2
# While the backend stays unreachable, repeat the warning this often.
DOWN_REMINDER = 60.0


class Exit(Exception):
    """Leave the loop with this exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def signame(signum: int) -> str:
    return signal.Signals(signum).name


class Backoff:
    """Exponential backoff with jitter, so many standbys do not retry in step."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        delay = self.current * random.uniform(0.8, 1.2)
        self.current = min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class Supervisor:
    def __init__(self, config: Config, backend: Backend, observer: Observer | None = None) -> None:
        self.config = config
        self.backend = backend
        self.observer = observer or Observer()
        self.where = backend.describe(config.name)
        self.state = State.STARTING
        self.child: Child | None = None
        self.events = Events()
        self.caller = Caller(self.events)
        self.watchdog = Watchdog()
        self._holder_seen = ""  # the holder a standby logged last

    # -- plumbing ---------------------------------------------------------------

    def _enter(
        self, state: State, sentence: str, level: int = logging.INFO, reason: str = ""
    ) -> None:
        """Log one sentence when the state changes; repeats go to debug."""
        if state is self.state:
            log.debug(sentence)
            return
        self.state = state
        self.observer.state_changed(state.name.lower(), reason)
        log.log(level, sentence, extra={"event": state.name.lower(), "reason": reason})

    def _call_timeout(self, limit: float = math.inf) -> float:
        return max(0.0, min(self.config.call_timeout, limit))

    def run(self) -> int:
        with self.events:
            try:
                while True:
                    lease = self._contend()
                    code = self._hold(lease)
                    if code is not None:
                        return code
            except Exit as done:
                return done.code
            finally:
                self._stop_child_if_running()
                self.watchdog.close()
                self._close_backend()
                self.observer.closed()

    def _close_backend(self) -> None:
        try:
            self.caller.call(self.backend.close, timeout=self.config.call_timeout)
        except Exception as exc:  # closing is best effort; the process is leaving
            log.debug("closing the backend failed: %s", exc)

    # -- standby ----------------------------------------------------------------

    def _check_stop(self) -> None:
        for signum in self.events.take():
            if signum in STOPPING:
                log.info("received %s while not holding the lease: exiting", signame(signum))
                raise Exit(128 + signum)
            if signum in FORWARDED:
                log.debug("ignoring %s: no child is running", signame(signum))

    def _pause(self, seconds: float) -> None:
        """Sleep, waking early only to leave on a stop signal."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._check_stop()
            self.events.sleep(left)
        self._check_stop()

    def _contend(self) -> Lease:
        cfg = self.config
        started = time.monotonic()
        backoff = Backoff(0.2, max(0.5, min(5.0, cfg.ttl / 2)))
        self._enter(State.CONTENDING, f"contending for {self.where} as {cfg.node_id}")
        attempts = 0
        down_since = 0.0
        reminded = 0.0
        while True:
            self._check_stop()
            waited = time.monotonic() - started
            # At least one attempt: --wait-timeout 0 takes a free lock.
            if cfg.wait_timeout is not None and attempts and waited >= cfg.wait_timeout:
                log.error("gave up after waiting %.1fs for %s (--wait-timeout)", waited, self.where)
                raise Exit(EXIT_WAIT_TIMEOUT)
            attempts += 1
            info = HolderInfo(node_id=cfg.node_id)
            try:
                lease = self.caller.call(
                    self.backend.acquire,
                    cfg.name,
                    info,
                    timeout=self._call_timeout(),
                    late=self._release_late,
                )
                if lease is not None:
                    return lease
                self._note_holder()
                wait_for = cfg.ttl
                if cfg.wait_timeout is not None:
                    wait_for = min(wait_for, cfg.wait_timeout - waited)
                self.caller.call(
                    self.backend.wait,
                    cfg.name,
                    max(0.0, wait_for),
                    timeout=wait_for + cfg.call_timeout,
                    interruptible=True,
                )
                backoff.reset()
            except Interrupted:
                continue
            except BackendRejected:
                raise
            except BackendUnavailable as exc:
                delay = backoff.next()
                if cfg.wait_timeout is not None:
                    delay = min(delay, max(0.0, cfg.wait_timeout - waited))
                now = time.monotonic()
                if self.state is not State.BACKEND_DOWN:
                    down_since = reminded = now
                elif now - reminded >= DOWN_REMINDER:
                    # A standby that waits for a backend must not look idle in the log.
                    reminded = now
                    log.warning(
                        "still cannot reach the backend after %.0fs, will keep trying: %s",
                        now - down_since,
                        exc,
                    )
                self._enter(
                    State.BACKEND_DOWN,
                    f"cannot reach the backend, will keep trying: {exc}",
                    logging.WARNING,
                )
                self._pause(delay)

    def _note_holder(self) -> None:
        """After a failed acquisition: log when this node starts standing by, and each
        time the holder (node or fencing token) changes after that. One holder() read
        per failed acquisition, about one per ttl while nothing changes, none where the
        acquisition read it already (consul; docs/observability.md)."""
        try:
            holder = self.caller.call(
                self.backend.refused_by, self.config.name, timeout=self._call_timeout()
            )
        except (BackendUnavailable, BackendRejected):
            holder = None
        if self.state is not State.STANDBY:
            self._holder_seen = self._describe_holder(holder)
            self._enter(State.STANDBY, f"standing by: {self.where} is held by {self._holder_seen}")
        elif holder is not None and (seen := self._describe_holder(holder)) != self._holder_seen:
            self._holder_seen = seen
            log.info(
                "the holder of %s changed: now %s", self.where, seen, extra={"event": "holder"}
            )

    @staticmethod
    def _describe_holder(holder: HolderInfo | None) -> str:
        if holder is None:  # released meanwhile, or the backend could not tell
            return "another node"
        if holder.fencing_token is None:
            return holder.node_id
        return f"{holder.node_id} (fencing token {holder.fencing_token})"

    def _release_late(self, lease: Lease | None) -> None:
        """An acquisition we gave up on succeeded after all: free it at once, or the
        lock would stay taken with no child behind it until it expired."""
        if lease is not None:
            self.backend.release(lease)
            log.info("an acquisition that had timed out succeeded late: released it")

    # -- holding ----------------------------------------------------------------

    def _child_env(self, lease: Lease) -> dict[str, str]:
        """Our environment, plus where the lease lives and who holds it: a child such as
        coordinator.celery.Scheduler keeps its state under the same name, fenced by the
        token, with no configuration of its own."""
        env = dict(os.environ)
        env["COORDINATOR_BACKEND"] = self.config.backend
        if self.config.url:
            env["COORDINATOR_URL"] = self.config.url
        else:  # the backend's own defaults (REDIS_URL, ...) apply in the child too
            env.pop("COORDINATOR_URL", None)
        env["COORDINATOR_KEY_PREFIX"] = self.config.key_prefix
        env["COORDINATOR_NAME"] = self.config.name
        env["COORDINATOR_NODE_ID"] = self.config.node_id
        env["COORDINATOR_FENCING_TOKEN"] = str(lease.fencing_token)
        return env

    def _fence_at(self, lease: Lease) -> float:
        return lease.deadline - self.config.grace - self.config.margin

    def _kill_at(self, lease: Lease) -> float:
        """The last moment the child may run: the lease could expire after it."""
        return lease.deadline - self.config.margin

    def _hold(self, lease: Lease) -> int | None:
        """Run the child while the lease holds. Returns an exit code, or None to
        contend again after losing the lease."""
        cfg = self.config
        fence_at = self._fence_at(lease)
        next_renew = lease.deadline - cfg.ttl + cfg.renew_interval
        start_at = time.monotonic()
        log.info(
            "acquired %s (fencing token %d)",
            self.where,
            lease.fencing_token,
            extra={"event": "acquired"},
        )
        self.observer.acquired(lease.fencing_token)
        if lease.state_reset and cfg.effective_safety_delay > 0:
            # Never shorter than the backend's own hold-off.
            delay = max(cfg.effective_safety_delay, lease.hold_off)
            start_at += delay
            self._enter(
                State.DELAYING,
                f"{lease.state_reset}, so an earlier holder could still be running: waiting "
                f"the safety delay of {delay:g}s before starting the child",
            )
        elif lease.hold_off > 0:
            start_at += lease.hold_off
            self._enter(
                State.DELAYING,
                f"{lease.hold_off_reason}: waiting {lease.hold_off:g}s for an earlier holder "
                "to kill its child before starting this one",
            )
        renew_failing = False
        stop_signal = 0
        watch_quiet_until = 0.0
        while True:
            for signum in self.events.take():
                if signum in STOPPING:
                    stop_signal = stop_signal or signum
                elif signum in FORWARDED and self.child is not None:
                    log.info("forwarding %s to the child", signame(signum))
                    self.child.signal(signum)
                elif signum == signal.SIGCHLD and self.child is not None:
                    self._report_stopped(self.child)
            if self.child is not None and (code := self.child.poll()) is not None:
                self._reaped()
                if code == 128 + signal.SIGKILL and time.monotonic() >= self._kill_at(lease):
                    self._enter(
                        State.STOPPING,
                        "the lease ran out while this supervisor was not running (stopped or "
                        "starved); the watchdog killed the child",
                        logging.WARNING,
                        reason="paused",
                    )
                    self._release(lease)  # still ours if nobody took it meanwhile
                    return None
                self._enter(State.EXITED, f"child exited with code {code}: releasing the lease")
                self._release(lease)
                return code
            if stop_signal:
                self._enter(
                    State.STOPPING, f"received {signame(stop_signal)}: stopping", reason="signal"
                )
                code = self._stop_child(lease) if self.child else 128 + stop_signal
                self._release(lease)
                return code
            now = time.monotonic()
            if now >= fence_at:
                self._enter(
                    State.STOPPING,
                    f"no renewal for {now - (lease.deadline - cfg.ttl):.1f}s and the lease may "
                    f"expire in {lease.deadline - now:.1f}s: stopping the child",
                    logging.WARNING,
                    reason="renewal_timeout",
                )
                if self.child is not None:
                    self._stop_child(lease)
                self._release(lease)  # the lease may still be ours: free it for the others
                return None
            if now >= next_renew:
                try:
                    lease = self.caller.call(
                        self.backend.renew, lease, timeout=self._call_timeout(fence_at - now)
                    )
                except LeaseLost as exc:
                    self._enter(
                        State.STOPPING, f"lease lost: {exc}", logging.WARNING, reason="lease_lost"
                    )
                    if self.child is not None:
                        self._stop_child(lease, at_once=exc.stop_now)
                    self._forget(lease)
                    return None
                except (BackendUnavailable, BackendRejected) as exc:
                    renew_failing = True
                    self.observer.renew_failed()
                    log.warning(
                        "renewal failed, will retry; the child is stopped in %.1fs unless a "
                        "renewal succeeds: %s",
                        max(0.0, fence_at - time.monotonic()),
                        exc,
                    )
                    next_renew = time.monotonic() + min(0.5, cfg.renew_interval / 4)
                    continue
                self.observer.renewed(time.monotonic() - now)
                fence_at = self._fence_at(lease)
                next_renew = lease.deadline - cfg.ttl + cfg.renew_interval
                if self.child is not None:
                    self.watchdog.extend(self._kill_at(lease))
                if renew_failing:
                    log.info("renewed the lease again", extra={"event": "renewed"})
                    renew_failing = False
                continue
            if self.child is None and now >= start_at:
                if lease.ready:
                    self._start_child(lease)
                    continue
                # Renew soon: the backend may be ready (postgres: the beacon) by then.
                log.debug("the backend is not ready for a child yet: renewing soon")
                next_renew = min(next_renew, now + READY_POLL)
            wake_at = min(fence_at, next_renew)
            if self.child is None and lease.ready:
                wake_at = min(wake_at, start_at)
            watch = self.backend.watch_fd() if now >= watch_quiet_until else None
            woke = self.events.sleep(wake_at - time.monotonic(), watch)
            if (late := time.monotonic() - wake_at) > PAUSE_NOTICE:
                log.warning("this supervisor was not running for %.1fs (stopped or starved)", late)
            if woke:
                # The server may have dropped us: check now rather than at the next
                # renewal, at most a few times a second if the socket stays readable.
                log.debug("the backend connection needs attention: renewing now")
                next_renew = time.monotonic()
                watch_quiet_until = next_renew + 0.2

    def _start_child(self, lease: Lease) -> None:
        try:
            self.child = Child(self.config.command, self._child_env(lease))
        except ChildStartError:
            self._release(lease)
            raise  # the CLI prints it as the one error line, with its exit code
        self.watchdog.arm(self.child.pid, self._kill_at(lease))
        self.observer.child_started(self.child.pid)
        self._enter(State.RUNNING, f"started the child, pid {self.child.pid}")

    def _report_stopped(self, child: Child) -> None:
        """A child stopped by a signal holds the lease and does nothing: say so."""
        if (signum := child.stopped_by()) is None:
            return
        if signum in (signal.SIGTTIN, signal.SIGTTOU):
            log.warning(
                "the child (pid %d) is stopped by %s: it tried to use the terminal, which "
                "it cannot in its own process group; give it its input from a file or "
                "/dev/null (docs/troubleshooting.md)",
                child.pid,
                signame(signum),
                extra={"event": "child_stopped"},
            )
        else:
            log.warning(
                "the child (pid %d) is stopped by %s and holds the lease doing nothing "
                "until it gets SIGCONT",
                child.pid,
                signame(signum),
                extra={"event": "child_stopped"},
            )

    def _reaped(self) -> None:
        """The child was reaped: kill what is left of its group, stand the watchdog down."""
        assert self.child is not None
        if not self.child.kill_stragglers():
            log.warning(
                "processes of the child's group survived SIGKILL for 5s (uninterruptible "
                "sleep?): going on without them"
            )
        self.child = None
        self.watchdog.disarm()

    def _stop_child(self, lease: Lease, at_once: bool = False) -> int:
        """TERM the child's process group, KILL after grace (never later than the
        lease deadline minus the margin), reap it. Returns its exit code. `at_once`:
        KILL without grace, the lock may be another node's within its hold-off."""
        child = self.child
        assert child is not None
        cfg = self.config
        kill_at = min(time.monotonic() + cfg.grace, self._kill_at(lease))
        killed = at_once or time.monotonic() >= kill_at
        if killed:
            # Past the last moment (this supervisor was stopped or starved), or the lock
            # is already free for the others: no grace.
            log.warning("the lease may already be another node's: SIGKILL to the child's group")
            child.signal_group(signal.SIGKILL)
        else:
            log.info(
                "stopping the child: SIGTERM to its process group, SIGKILL in %.1fs",
                kill_at - time.monotonic(),
            )
            child.signal_group(signal.SIGTERM)
            child.signal_group(signal.SIGCONT)  # a stopped member handles TERM only once resumed
        watch_quiet_until = 0.0
        while (code := child.poll()) is None:
            for signum in self.events.take():
                if signum in STOPPING and not killed:
                    log.info("received %s again: killing the child now", signame(signum))
                    kill_at = time.monotonic()
            now = time.monotonic()
            if not killed and now >= kill_at:
                log.warning("child did not exit within %gs of SIGTERM: sending SIGKILL", cfg.grace)
                child.signal_group(signal.SIGKILL)
                killed = True
            # The lock can go during the grace too (postgres: every session ended):
            # then a newcomer may start after its short hold-off, not after our grace.
            watch = self.backend.watch_fd() if not killed and now >= watch_quiet_until else None
            if self.events.sleep(0.05 if killed else kill_at - now, watch):
                watch_quiet_until = time.monotonic() + 0.2
                if self._lost_at_once(lease):
                    log.warning(
                        "the lease was lost while the child was stopping: SIGKILL to its group"
                    )
                    child.signal_group(signal.SIGKILL)
                    killed = True
        self._reaped()
        log.info("child stopped with code %d", code)
        return code

    def _lost_at_once(self, lease: Lease) -> bool:
        """The backend connection woke us while the child is stopping: is the lease
        gone in a way that lets a newcomer start before our grace ends?"""
        try:
            self.caller.call(self.backend.renew, lease, timeout=self._call_timeout())
        except LeaseLost as exc:
            return exc.stop_now
        except (BackendUnavailable, BackendRejected):
            pass
        return False

    def _stop_child_if_running(self) -> None:
        """Last resort on an unexpected error: the child must not outlive us."""
        if self.child is not None and self.child.poll() is None:
            log.error("stopping the child before exiting")
            self.child.signal_group(signal.SIGTERM)
            end = time.monotonic() + self.config.grace
            while self.child.poll() is None and time.monotonic() < end:
                time.sleep(0.05)
            self.child.signal_group(signal.SIGKILL)
            self.child.process.wait()
            self._reaped()

    def _forget(self, lease: Lease) -> None:
        """After losing the lease and reaping the child: let the backend drop what it
        kept for that lease (postgres: the beacon that told newcomers a child may run)."""
        try:
            self.caller.call(self.backend.forget, lease, timeout=self._call_timeout())
        except (BackendUnavailable, BackendRejected) as exc:
            log.debug("dropping the lost lease's state failed: %s", exc)

    def _release(self, lease: Lease) -> None:
        try:
            self.caller.call(self.backend.release, lease, timeout=self._call_timeout())
            log.info("released %s", self.where, extra={"event": "released"})
        except (BackendUnavailable, BackendRejected) as exc:
            log.warning("could not release the lease; it expires by itself: %s", exc)
        self.observer.released()
