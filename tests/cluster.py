"""Real supervisors as subprocesses, each running the probe child, and the checker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.child import alive as alive  # the tests import it from here

PROBE = str(Path(__file__).with_name("probe.py"))
ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class Record:
    """One line of a probe's log (tests/probe.py)."""

    event: str  # start, stop, violation, grandchild, ignored-term
    pid: int
    ppid: int  # the supervisor for a probe, the probe for a grandchild
    token: str  # the fencing token, "-" without one
    at: float  # time.monotonic(), shared by every process on the host


def read_records(log: Path) -> list[Record]:
    if not log.exists():
        return []
    records = []
    for line in log.read_text().splitlines():
        event, pid, ppid, token, at = line.split()
        records.append(Record(event, int(pid), int(ppid), token, float(at)))
    return records


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the CLI under test: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": ROOT, **(extra or {})}


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `coordinator ARGS` to the end, capturing stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(env),
    )


def spawn_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `coordinator ARGS` in the background, stdout and stderr merged."""
    return subprocess.Popen(
        [sys.executable, "-m", "coordinator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(env),
    )


def stop_cli(proc: subprocess.Popen[str]) -> str:
    """SIGTERM a spawned CLI and return everything it printed."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return out


def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.02) -> float:
    """Poll until predicate() is true; returns the seconds it took. Fails on timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


class Cluster:
    def __init__(
        self, tmp: Path, backend_args: list[str], name: str = "probe", ttl: float = 3.0
    ) -> None:
        self.tmp = tmp
        self.ttl = ttl
        self.backend_args = backend_args
        self.name = name
        self.log = tmp / "probe.log"
        self.lock = tmp / "probe.flock"
        self.procs: list[subprocess.Popen[str]] = []

    def command(
        self,
        *extra: str,
        ttl: float | None = None,
        grace: float | None = None,
        probe_flags: tuple[str, ...] = (),
        child: list[str] | None = None,
    ) -> list[str]:
        ttl = self.ttl if ttl is None else ttl
        grace = ttl / 3 if grace is None else grace
        argv = child or [sys.executable, PROBE, str(self.lock), str(self.log), *probe_flags]
        return [
            sys.executable,
            "-m",
            "coordinator",
            *self.backend_args,
            "--name",
            self.name,
            "--ttl",
            str(ttl),
            "--grace",
            str(grace),
            *extra,
            "--",
            *argv,
        ]

    def start(self, *extra: str, **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.command(*extra, **kwargs),  # type: ignore[arg-type]
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def records(self, event: str | None = None) -> list[Record]:
        return [r for r in read_records(self.log) if event is None or r.event == event]

    def starts(self) -> list[Record]:
        return self.records("start")

    def wait_starts(self, count: int, timeout: float) -> float:
        return wait_until(lambda: len(self.starts()) >= count, timeout)

    def holder(self) -> subprocess.Popen[str]:
        """The supervisor whose child started last."""
        last = self.starts()[-1]
        return next(p for p in self.procs if p.pid == last.ppid)

    def check(self) -> None:
        """The invariant: never two probes at once, fencing tokens strictly increase."""
        violations = self.records("violation")
        assert not violations, f"two children ran at once: {violations}"
        tokens = [int(r.token) for r in self.starts()]
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def output(self, proc: subprocess.Popen[str]) -> str:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
        return out
