"""What the supervisor reports as it runs, and where it goes.

The supervisor calls the hooks of an `Observer` at each state change and after each
renewal. `Tracker` keeps the current state for JSON log lines, /healthz and the
`--status-file`; metrics (coordinator/metrics.py) are another observer, imported only
when `--metrics-address` is given so prometheus-client stays optional.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coordinator import redact
from coordinator.config import Config
from coordinator.errors import ConfigError, MissingDependency

LOG_FORMATS = ("text", "json")

# Why the node stopped leading, as passed with the stopping state; "other" covers
# any path that gives no reason (an error while starting the child, a crash).
REASONS = ("child_exited", "signal", "renewal_timeout", "lease_lost", "paused", "other")


class Observer:
    """Hooks the supervisor calls from its main thread. Each does nothing here."""

    def state_changed(self, state: str, reason: str = "") -> None:
        """The supervisor entered `state` (a State name in lower case)."""

    def acquired(self, fencing_token: int) -> None:
        """The lease was acquired."""

    def renewed(self, seconds: float) -> None:
        """A renewal succeeded; `seconds` is how long the call took."""

    def renew_failed(self) -> None:
        """A renewal could not tell whether the lease is still ours; it is retried."""

    def released(self) -> None:
        """The lease was given back (or the attempt to give it back failed)."""

    def child_started(self, pid: int) -> None:
        """The child was started."""

    def closed(self) -> None:
        """The supervisor loop has ended."""


# Characters that would split a text log line or drive a terminal: C0, DEL, C1, and
# Unicode's line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """`text` on one line: control characters written as \\n, \\t or \\xNN."""
    return CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def local_time(epoch: float) -> str:
    """Wall-clock time with milliseconds and the UTC offset, for text log lines."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="milliseconds")


def iso(epoch: float | None) -> str | None:
    """Wall-clock seconds as ISO-8601 in UTC, or None when unknown."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Snapshot:
    state: str = "starting"
    since: float = field(default_factory=time.time)  # wall clock of the last state change
    reason: str = ""
    leader: bool = False
    fencing_token: int | None = None
    child_pid: int | None = None
    last_renew: float | None = None  # wall clock, for display
    last_renew_mono: float | None = None  # monotonic, for the health rule


class StatusFile:
    """Writes a JSON document to a path, on a thread of its own: a slow or stuck file
    system must not hold up the supervisor loop, which has a child to stop on time."""

    def __init__(self, path: Path, document: Callable[[], dict[str, Any]]) -> None:
        self.path, self.document = path, document
        try:
            self._write()  # at start, so a bad path is a usage error, not a warning later
        except OSError as exc:
            raise ConfigError(f"cannot write --status-file {path}: {exc}") from exc
        self._wanted, self._done = threading.Event(), threading.Event()
        self._failed = False
        threading.Thread(target=self._run, name="status-file", daemon=True).start()

    def _write(self) -> None:
        # Write beside the target and rename over it, so readers never see half a file.
        # The temporary file has an unpredictable name and is created with O_EXCL
        # (mkstemp): another user cannot plant a link there for us to write through.
        import tempfile  # here: it imports shutil and random, which the rest never needs

        # The rename replaces whatever is there: never a device (run as root,
        # --status-file /dev/null would leave a regular file in its place), a pipe, a
        # socket or a directory.
        with contextlib.suppress(FileNotFoundError):
            mode = os.lstat(self.path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise OSError(f"{self.path} exists and is not a regular file; it is left alone")
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(redact.clean(self.document())) + "\n")
            os.chmod(tmp, 0o644)  # probes may run as another user; it holds no secret
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self._write()  # the latest document: requests made meanwhile are covered
                self._failed = False
            except OSError as exc:
                # Keep supervising: the file is for probes, the lease matters more.
                level = logging.DEBUG if self._failed else logging.WARNING
                logging.getLogger("coordinator").log(
                    level, "cannot write the status file %s: %s", self.path, exc
                )
                self._failed = True
            if not self._wanted.is_set():
                self._done.set()

    def request(self) -> None:
        """Rewrite the file soon; never blocks."""
        self._done.clear()
        self._wanted.set()

    def flush(self, timeout: float) -> None:
        """Rewrite the file and wait for it, at most `timeout` seconds."""
        self.request()
        self._done.wait(timeout)


class Tracker(Observer):
    """The supervisor's current state, for JSON logs, /healthz and the status file.

    The snapshot is replaced whole on each hook, so other threads (the HTTP server)
    read a consistent one without a lock. Other observers (metrics) are called after it.
    """

    def __init__(
        self, config: Config, status_file: Path | None = None, others: list[Observer] | None = None
    ) -> None:
        self.config = config
        self.others = others or []
        self.current = Snapshot()
        self.status_file = StatusFile(status_file, self.document) if status_file else None

    def _update(self, **changes: Any) -> None:
        self.current = replace(self.current, **changes)
        if self.status_file is not None:
            self.status_file.request()

    def state_changed(self, state: str, reason: str = "") -> None:
        changes: dict[str, Any] = {"state": state, "since": time.time(), "reason": reason}
        if state in ("stopping", "exited", "contending"):
            changes["leader"] = False
        if state not in ("running", "stopping"):  # while stopping, the child still exists
            changes["child_pid"] = None
        self._update(**changes)
        for other in self.others:
            other.state_changed(state, reason)

    def acquired(self, fencing_token: int) -> None:
        self._update(
            leader=True,
            fencing_token=fencing_token,
            last_renew=time.time(),
            last_renew_mono=time.monotonic(),
        )
        for other in self.others:
            other.acquired(fencing_token)

    def renewed(self, seconds: float) -> None:
        self._update(last_renew=time.time(), last_renew_mono=time.monotonic())
        for other in self.others:
            other.renewed(seconds)

    def renew_failed(self) -> None:
        for other in self.others:
            other.renew_failed()

    def released(self) -> None:
        self._update(leader=False, child_pid=None)
        for other in self.others:
            other.released()

    def child_started(self, pid: int) -> None:
        self._update(child_pid=pid)
        for other in self.others:
            other.child_started(pid)

    def closed(self) -> None:
        self._update(state="stopped", since=time.time(), leader=False, child_pid=None)
        if self.status_file is not None:
            self.status_file.flush(timeout=1.0)  # the process exits next
        for other in self.others:
            other.closed()

    # -- health -----------------------------------------------------------------

    @property
    def renew_limit(self) -> float:
        """How old the last renewal may be while holding: past this point the
        supervisor itself stops the child (the fencing point of the timing rule)."""
        return self.config.ttl - self.config.grace - self.config.margin

    def health(self) -> tuple[bool, str]:
        """(healthy, one line saying why) for /healthz."""
        now = self.current
        if now.state == "stopped":
            return False, "stopped: the supervisor loop has ended"
        if now.leader and now.last_renew_mono is not None:
            age = time.monotonic() - now.last_renew_mono
            if age > self.renew_limit:
                return False, (
                    f"{now.state}: holding the lease but the last renewal was {age:.1f}s ago "
                    f"(limit {self.renew_limit:.1f}s)"
                )
            return True, f"{now.state}: holding the lease, renewed {age:.1f}s ago"
        return True, f"{now.state}: not holding the lease"

    # -- the status file --------------------------------------------------------

    def document(self) -> dict[str, Any]:
        now = self.current
        fresh_until = None
        if now.leader and now.last_renew is not None:
            fresh_until = round(now.last_renew + self.renew_limit, 3)
        return {
            "name": self.config.name,
            "node_id": self.config.node_id,
            "pid": os.getpid(),
            "state": now.state,
            "reason": now.reason or None,
            "since": iso(now.since),
            "since_epoch": round(now.since, 3),
            "leader": now.leader,
            "fencing_token": now.fencing_token if now.leader else None,
            "child_pid": now.child_pid,
            "last_renew": iso(now.last_renew) if now.leader else None,
            # While holding, the file is rewritten after every renewal: a probe that
            # finds the clock past this time has a supervisor that stopped renewing.
            "fresh_until": fresh_until,
        }


class TextFormatter(logging.Formatter):
    """TIME coordinator[PID] LEVEL sentence, one line per record whatever the sentence
    holds (a lock name with a newline is written as \\n)."""

    def format(self, record: logging.LogRecord) -> str:
        when, message = local_time(record.created), escape(record.getMessage())
        return f"{when} coordinator[{record.process}] {record.levelname} {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers. Messages are the same sentences as
    the text format (secrets are removed by coordinator.redact.LogFilter before)."""

    def __init__(self, config: Config, tracker: Tracker | None) -> None:
        super().__init__()
        self.config, self.tracker = config, tracker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": iso(record.created),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
            "name": self.config.name,
            "node_id": self.config.node_id,
            "pid": record.process,
        }
        if self.tracker is not None:
            line["state"] = self.tracker.current.state
        for key in ("event", "reason"):
            value = getattr(record, key, None)
            if value:
                line[key] = value
        return json.dumps(line, ensure_ascii=False)


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (every interface) for the metrics server."""
    host, sep, port_text = address.rpartition(":")
    # isascii: int() reads digits of any script ("٣" is 3).
    if not sep or not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ConfigError(
            f"--metrics-address must be HOST:PORT or :PORT (every interface), got {address!r}"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"--metrics-address: write an IPv6 host in brackets, got {address!r}")
    return host, int(port_text)


def start(
    config: Config,
    tracker: Tracker,
    metrics_address: str | None,
) -> Observer:
    """The observer the supervisor reports to; starts the metrics server if asked."""
    if not metrics_address:
        return tracker
    host, port = parse_address(metrics_address)
    try:
        from coordinator import metrics
    except ImportError as exc:
        raise MissingDependency(
            f"--metrics-address needs prometheus-client ({exc.name} is missing): "
            "pip install 'coordinator[metrics]'"
        ) from exc
    tracker.others.append(metrics.serve(config, tracker, host, port))
    return tracker
