"""A real Celery beat with coordinator.celery.Scheduler under real supervisors, and a
listener on the Redis broker that records every message beat sends."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import redis

from coordinator.child import processes
from tests.cluster import ROOT, cli_env, wait_until
from tests.store import Store

APP = """
import os
from celery import Celery
from celery.schedules import crontab

app = Celery("proj", broker=os.environ["BEAT_BROKER_URL"])
app.conf.broker_connection_retry_on_startup = True
app.conf.beat_max_loop_interval = 1
app.conf.task_default_queue = os.environ["BEAT_QUEUE"]
if os.environ.get("BEAT_REDBEAT_LOCK_TIMEOUT"):  # the benchmark's RedBeat nodes
    app.conf.redbeat_redis_url = os.environ["BEAT_BROKER_URL"]
    app.conf.redbeat_lock_timeout = int(os.environ["BEAT_REDBEAT_LOCK_TIMEOUT"])
    app.conf.redbeat_key_prefix = os.environ["BEAT_QUEUE"] + ":"
app.conf.beat_schedule = {
    name: {"task": f"proj.{name}", "schedule": float(seconds) if seconds else crontab()}
    for name, seconds in (
        item.split("=") for item in os.environ["BEAT_ENTRIES"].split(",")
    )
}
"""


@dataclass(frozen=True)
class Sent:
    task: str  # the entry's name
    at: float  # time.monotonic() when the listener took it off the queue
    wall: float  # time.time(), for crontab minutes


@dataclass
class Listener:
    """Takes every message off the broker's `celery` queue, as a worker would."""

    url: str
    queue: str
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.url)
        self.client.delete(self.queue)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.client.brpop([self.queue], timeout=0.2)
            if item is None:
                continue
            task = json.loads(item[1])["headers"]["task"].removeprefix("proj.")
            self.sent.append(Sent(task, time.monotonic(), time.time()))

    def times(self, task: str) -> list[float]:
        return [s.at for s in self.sent if s.task == task]

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.client.close()


class Beats:
    """Supervisors on one backend, each running `celery beat` with our scheduler."""

    def __init__(
        self,
        tmp: Path,
        store: Store,
        broker_url: str,
        entries: dict[str, float | None],
        ttl: float | None = None,
    ) -> None:
        self.tmp, self.store = tmp, store
        self.ttl = ttl or store.ttl
        self.name = "beat"
        queue = f"celery-{os.getpid()}-{tmp.name}"
        (tmp / "proj.py").write_text(APP)
        self.env = cli_env(
            {
                "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp}",
                "BEAT_BROKER_URL": broker_url,
                "BEAT_ENTRIES": ",".join(f"{k}={v or ''}" for k, v in entries.items()),
                "BEAT_QUEUE": queue,
            }
        )
        self.listener = Listener(broker_url, queue)
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, node: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "coordinator",
            *self.store.cli_args(),
            "--name",
            self.name,
            "--ttl",
            str(self.ttl),
            "--grace",
            str(self.ttl / 3),
            "--node-id",
            node,
            "--",
            sys.executable,
            "-m",
            "celery",
            "-A",
            "proj",
            "beat",
            "-S",
            "coordinator.celery.Scheduler",
            "--loglevel",
            "info",
            "--schedule",
            str(self.tmp / f"{node}.unused-schedule"),
        ]

    def start(self, node: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{node}.log", "ab")  # noqa: SIM115 - the process keeps it
        proc = subprocess.Popen(
            self.command(node), env=self.env, cwd=self.tmp, stdout=log, stderr=log
        )
        log.close()
        self.nodes[node] = proc
        return proc

    def log(self, node: str) -> str:
        path = self.tmp / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def holder(self) -> str | None:
        backend = self.store.backend(self.name, ttl=self.ttl)
        try:
            info = backend.holder(self.name)
        finally:
            backend.close()
        return info.node_id if info is not None else None

    def wait_holder(self, other_than: str | None = None, timeout: float = 40.0) -> str:
        found: list[str] = []

        def ready() -> bool:
            node = self.holder()
            if node is None or node == other_than or "schedule state in" not in self.log(node):
                return False
            found.append(node)
            return True

        wait_until(ready, timeout, step=0.1)
        return found[-1]

    def descendants(self, pid: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for child, fields in processes():
            children.setdefault(int(fields[1]), []).append(child)
        found, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def stop_all(self) -> None:
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.listener.close()


def early_duplicates(times: list[float], every: float) -> list[float]:
    """Gaps between consecutive sends well under the interval: a tick sent twice."""
    return [b - a for a, b in itertools.pairwise(times) if b - a < every / 2]


def largest_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def cron_minutes(sent: list[Sent], task: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in sent:
        if s.task == task:
            minute = datetime.fromtimestamp(s.wall, timezone.utc).strftime("%H:%M")
            counts[minute] = counts.get(minute, 0) + 1
    return counts
