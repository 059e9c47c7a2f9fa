"""The probe child for end-to-end tests.

It takes an exclusive flock on a shared file: if another probe holds it, two children
run at once, which is recorded as a violation. It appends one line per event to a
log: "<event> <pid> <ppid> <fencing token> <monotonic time>".

Flags: --grandchild forks a grandchild that shares the flock (an orphan keeps it held);
--wait-lock waits for the flock after a violation, so its "start" record tells when the
earlier child was gone (the overlap's length); --ignore-term ignores SIGTERM, and
--ignore-term-if=PATH does so while PATH exists; --slow-stop=S takes S seconds to stop,
and --slow-stop-if=PATH takes the seconds written in PATH while it exists;
--exit-soon exits by itself.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time


def record(log: str, event: str) -> None:
    token = os.environ.get("COORDINATOR_FENCING_TOKEN", "-")
    line = f"{event} {os.getpid()} {os.getppid()} {token} {time.monotonic():.6f}\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> None:
    lock_path, log = sys.argv[1], sys.argv[2]
    flags = set(sys.argv[3:])
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        record(log, "violation")
        if "--wait-lock" not in flags:
            sys.exit(99)
        fcntl.flock(lock, fcntl.LOCK_EX)
    record(log, "start")
    if "--grandchild" in flags:
        # A grandchild in the same process group must die with the child.
        pid = os.fork()
        if pid == 0:
            record(log, "grandchild")
            while True:
                time.sleep(1)

    def on_term(signum: int, frame: object) -> None:
        ignore = "--ignore-term" in flags or any(
            f.startswith("--ignore-term-if=") and os.path.exists(f.split("=", 1)[1]) for f in flags
        )
        if ignore:
            record(log, "ignored-term")
            return
        for flag in flags:
            if flag.startswith("--slow-stop="):
                # A child that needs a while to shut down widens any overlap.
                time.sleep(float(flag.split("=", 1)[1]))
            elif flag.startswith("--slow-stop-if="):
                path = flag.split("=", 1)[1]
                if os.path.exists(path):
                    with open(path) as f:
                        time.sleep(float(f.read()))
        record(log, "stop")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if "--exit-soon" in flags:
        time.sleep(0.3)
        record(log, "stop")
        sys.exit(0)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
