"""PostgreSQL's CPU with N plain sessions queued on one advisory lock, waiting as
coordinator's standbys do (a lock_timeout of the ttl, then pg_try_advisory_lock),
with deadlock_timeout at its default of 1 s and raised to 60 s:
`python -m benchmarks.pgqueue 100 300 500`. No coordinator process is involved.
"""

from __future__ import annotations

import sys
import threading
import time

import psycopg

from benchmarks.backends import BenchPostgres
from benchmarks.measure import tree_cpu_seconds

KEY = 42
WINDOW = 15.0


def waiter(url: str, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            try:
                with conn.transaction():
                    conn.execute(
                        "SELECT set_config('lock_timeout', '5000', true),"
                        " set_config('statement_timeout', '0', true)"
                    )
                    conn.execute("SELECT pg_advisory_lock(%s)", (KEY,))
            except psycopg.errors.LockNotAvailable:
                pass
            conn.execute("SELECT pg_try_advisory_lock(%s)", (KEY,))


def server_cpu(pg: BenchPostgres, window: float) -> float:
    assert pg.process is not None
    before, started = tree_cpu_seconds(pg.process.pid), time.monotonic()
    time.sleep(window)
    return (tree_cpu_seconds(pg.process.pid) - before) / (time.monotonic() - started)


def measure(sessions: int) -> dict[str, float]:
    pg = BenchPostgres(max_connections=sessions + 50)
    stop = threading.Event()
    try:
        with psycopg.connect(pg.url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (KEY,))
            threads = [
                threading.Thread(target=waiter, args=(pg.url, stop), daemon=True)
                for _ in range(sessions)
            ]
            for thread in threads:
                thread.start()
            time.sleep(8)  # every session connected and queued
            result = {}
            for setting in ("1s", "60s"):
                pg.sql(f"ALTER SYSTEM SET deadlock_timeout = '{setting}'; SELECT pg_reload_conf()")
                time.sleep(6)  # past one lock_timeout: every waiter runs under it
                result[setting] = server_cpu(pg, WINDOW)
            stop.set()
            for thread in threads:  # each leaves within one lock_timeout
                thread.join(timeout=10)
            return result
    finally:
        stop.set()
        pg.close()


def main() -> None:
    for sessions in [int(n) for n in sys.argv[1:]] or [100, 300, 500]:
        cpu = measure(sessions)
        print(
            f"{sessions} sessions queued: server CPU {cpu['1s'] * 100:.1f}% of a core with "
            f"deadlock_timeout 1s, {cpu['60s'] * 100:.1f}% with 60s",
            flush=True,
        )


if __name__ == "__main__":
    main()
