"""The watchdog: a second, tiny process that kills the child when the supervisor cannot.

The supervisor stops its child before the lease could expire, but only while it runs.
Frozen (SIGSTOP, a debugger, starved) it stops nothing, and killed with SIGKILL it
leaves the child's grandchildren behind (the parent-death signal reaches only the
direct child). The watchdog covers both: the supervisor tells it the child's process
group and the last moment the child may run (the lease deadline minus the margin, on
the shared monotonic clock), and moves that moment on after each renewal. When the
moment passes without news, or the supervisor's end of the pipe closes, the watchdog
SIGKILLs the whole group.

It runs in its own session (a signal to the supervisor's process group does not reach
it), imports only the standard library and is started with `python -I -S`, so it costs
a few megabytes and milliseconds. It is started with the first child and lives as long
as its supervisor.

Its lines follow --log-format: the supervisor passes the format, and the lock name and
node id hex-encoded (any character survives argv), as arguments (see `configure`).

Protocol, one line each on the watchdog's stdin:
    run PGID KILL_AT   a child runs in group PGID; kill it at KILL_AT (time.monotonic())
    until KILL_AT      the lease was renewed: the new moment
    idle               the child is gone: nothing to kill
"""

from __future__ import annotations

import math
import os
import select
import sys
import time

# The watchdog process imports only what its loop needs: not subprocess, contextlib or
# typing, which import much more (the supervisor's side imports them when it starts
# one), and _signal, the C module that `signal` wraps in enums, which import more again.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    import subprocess
    from typing import IO
else:
    try:
        import _signal as signal
    except ImportError:
        import signal

# How the watchdog writes its lines; set by configure() in the supervisor, passed on.
_settings = {"format": "text", "name": "", "node_id": ""}


def configure(log_format: str, name: str, node_id: str) -> None:
    """Watchdogs started from now on write their lines in this format, for this lock."""
    _settings.update(format=log_format, name=name, node_id=node_id)


def _timestamp(now: float, utc: bool) -> str:
    """As the supervisor's formatters write it: milliseconds and the UTC offset."""
    moment = time.gmtime(now) if utc else time.localtime(now)
    offset = "+0000" if utc else time.strftime("%z", moment)
    ms = int(now % 1 * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', moment)}.{ms:03d}{offset[:3]}:{offset[3:]}"


def _line(text: str, settings: dict[str, str], event: str) -> str:
    """One warning, as the supervisor's text or JSON formatter would write it."""
    now = time.time()
    if settings.get("format") == "json":
        import json  # only here: the watchdog stays small

        return json.dumps(
            {
                "ts": _timestamp(now, utc=True),
                "level": "warning",
                "message": f"watchdog: {text}",
                "name": settings.get("name", ""),
                "node_id": settings.get("node_id", ""),
                "pid": os.getpid(),
                "event": event,
            },
            ensure_ascii=False,
        )
    return f"{_timestamp(now, utc=False)} coordinator[{os.getpid()}] WARNING watchdog: {text}"


def _arguments() -> list[str]:
    return [
        _settings["format"],
        _settings["name"].encode("utf-8", "surrogateescape").hex(),
        _settings["node_id"].encode("utf-8", "surrogateescape").hex(),
    ]


def _parse(args: list[str]) -> dict[str, str]:
    if len(args) != 3:
        return {}
    name, node = (bytes.fromhex(word).decode("utf-8", "replace") for word in args[1:])
    return {"format": args[0], "name": name, "node_id": node}


def _say(text: str, settings: dict[str, str], event: str) -> None:
    try:  # noqa: SIM105 (contextlib is not imported here: see the imports)
        os.write(2, f"{_line(text, settings, event)}\n".encode())
    except OSError:
        pass


def _kill(pgid: int) -> bool:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # gone, or only zombies left
        return False
    return True


def serve(stdin: int = 0, settings: dict[str, str] | None = None) -> None:
    """The watchdog process's loop."""
    settings = settings or {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        # It exits when the supervisor does (end of file), not on a terminal's or a
        # service manager's stop signal that the supervisor handles itself.
        signal.signal(signum, signal.SIG_IGN)
    supervisor = os.getppid()
    pgid, kill_at = 0, math.inf
    pending = b""
    while True:
        timeout = None if not pgid else max(0.0, kill_at - time.monotonic())
        if select.select([stdin], [], [], timeout)[0]:
            data = os.read(stdin, 4096)
            if not data:
                if pgid and _kill(pgid):
                    _say(
                        f"supervisor {supervisor} is gone: killed the child's group {pgid}",
                        settings,
                        "watchdog_kill",
                    )
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                words = line.split()
                if words[:1] == [b"run"]:
                    pgid, kill_at = int(words[1]), float(words[2])
                elif words[:1] == [b"until"]:
                    kill_at = float(words[1])
                elif words[:1] == [b"idle"]:
                    pgid, kill_at = 0, math.inf
            continue  # read everything pending before judging the time
        if pgid and time.monotonic() >= kill_at:
            if _kill(pgid):
                late = time.monotonic() - kill_at
                _say(
                    f"supervisor {supervisor} did not renew the lease in time (it may be "
                    f"frozen): killed the child's group {pgid} ({late * 1000:.0f} ms late)",
                    settings,
                    "watchdog_kill",
                )
            pgid, kill_at = 0, math.inf


class Watchdog:
    """The supervisor's end: starts the watchdog and keeps it informed."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None
        self._pgid = 0  # the child's process group while one runs, else 0
        self._kill_at = math.inf

    def _start(self) -> None:
        import subprocess

        read, write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), *_arguments()],
                stdin=read,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(read)
        os.set_blocking(write, False)  # never stall the supervisor on a stuck watchdog
        self._pipe = os.fdopen(write, "wb", buffering=0)

    def _state(self) -> str:
        """The whole story in one line, for a watchdog that starts late in it."""
        return f"run {self._pgid} {self._kill_at:.6f}" if self._pgid else "idle"

    def _send(self, line: str) -> None:
        for attempt in (1, 2):
            if self._pipe is None:
                self._start()
            assert self._pipe is not None
            try:
                self._pipe.write(f"{line}\n".encode())
                return
            except BrokenPipeError:
                # It died (killed by hand?): start another and tell it the whole story.
                self._drop()
                line = self._state()
                if attempt == 2:
                    raise
            except BlockingIOError:
                # A watchdog that stopped reading: it would kill early, never late.
                return

    def arm(self, pgid: int, kill_at: float) -> None:
        self._pgid, self._kill_at = pgid, kill_at
        self._send(self._state())

    def extend(self, kill_at: float) -> None:
        if self._pgid:
            self._kill_at = kill_at
            self._send(f"until {kill_at:.6f}")

    def disarm(self) -> None:
        if self._pgid:
            self._pgid = 0
            self._send("idle")

    def _drop(self) -> None:
        import contextlib
        import subprocess

        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)
            self.process = None

    def close(self) -> None:
        """End of file tells the watchdog to leave (killing the child if still armed).
        An idle watchdog has nothing to kill: the supervisor does not wait for it to
        leave (a Python start and exit, tens of milliseconds of every supervisor's exit)."""
        if self._pgid:
            self._drop()
            return
        import contextlib

        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None


if __name__ == "__main__":
    serve(settings=_parse(sys.argv[1:]))
