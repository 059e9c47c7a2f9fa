"""The child every supervisor runs in the benchmarks.

Its first act is to read the monotonic clock; then it takes a non-blocking flock on a
shared file (held by a live child means two children run at once) and appends one
line to the record file: "start <pid> <ppid> <overlap 0|1> <monotonic seconds>".
On SIGTERM it appends "stop ..." and exits. Run it with `python -S -E` so the
interpreter starts in a few milliseconds; only builtin modules are imported.
"""

import fcntl
import os
import signal
import sys
import time


def record(path: str, event: str, at: float, overlap: bool = False) -> None:
    line = f"{event} {os.getpid()} {os.getppid()} {int(overlap)} {at:.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def main() -> None:
    started = time.monotonic()
    records, lock_path = sys.argv[1], sys.argv[2]
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        overlap = False
    except BlockingIOError:
        overlap = True
    record(records, "start", started, overlap)

    def on_term(signum: int, frame: object) -> None:
        record(records, "stop", time.monotonic())
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if overlap:
        # Hold the lock once the other child is gone, so a later overlap shows too.
        fcntl.flock(lock, fcntl.LOCK_EX)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
