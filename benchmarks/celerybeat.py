"""`python3 -m benchmarks.celerybeat`: a real Celery beat through failovers, side by
side: coordinator with coordinator.celery.Scheduler on each backend, RedBeat (its own
Redis lock and scheduler) and single-beat with Celery's default scheduler.

Three nodes per system, each in its own directory (its own celerybeat-schedule, as on
separate machines), a Redis broker whose queue a listener empties as a worker would.
The node that sent the last tick is killed with SIGKILL (or stopped with SIGTERM) and
started again, several times. Per task: runs against the nominal count, early
duplicates (a run less than half an interval after the previous one; for the crontab,
a second run in one minute), the largest gap; and the time from each kill -9 to the
next run of the fastest task. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import backends, singlebeat
from benchmarks.measure import percentile
from benchmarks.scenarios import log
from coordinator.child import processes
from tests.celerybeat import APP, Listener, cron_minutes, early_duplicates, largest_gap

REDBEAT = "2.4.2"
CELERY = "5.7.0"
ALL = ("redis", "postgres", "consul", "file")
FAST, SLOW = 5.0, 20.0
ENTRIES = {"fast": FAST, "slow": SLOW, "cron": None}
SENT = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Scheduler: Sending"
)
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class System:
    label: str
    backend: str  # where the lock lives (redis for RedBeat and single-beat)
    ttl: float
    argv: list[str]  # the command of one node; {node} is replaced
    env: dict[str, str]


@dataclass
class Outcome:
    label: str
    minutes: float = 0.0
    runs: dict[str, tuple[int, float]] = field(default_factory=dict)  # task: (runs, nominal)
    duplicates: dict[str, int] = field(default_factory=dict)
    gaps: dict[str, float] = field(default_factory=dict)
    kill_to_tick: list[float] = field(default_factory=list)
    orphans: int = 0  # processes of the nodes' sessions still alive after every node stopped
    error: str = ""


class Nodes:
    """Three nodes of one system, each started again after it was killed or stopped."""

    def __init__(self, system: System, work: Path) -> None:
        self.system, self.work = system, work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.sessions: list[int] = []  # each node is the leader of its own session
        self.started = 0
        self.orphans = 0

    def start(self, node: str) -> None:
        directory = self.work / node
        directory.mkdir(parents=True, exist_ok=True)
        self.started += 1
        path = directory / f"run-{self.started}.log"
        argv = [arg.replace("{node}", node) for arg in self.system.argv]
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                argv,
                env=self.system.env,
                cwd=directory,
                stdout=out,
                stderr=out,
                start_new_session=True,  # to find orphans: the whole session is killed at the end
            )
        self.procs[node], self.logs[node] = proc, path
        self.sessions.append(proc.pid)

    def sender(self) -> str | None:
        """The running node whose beat sent the latest tick."""
        latest: tuple[str, str] | None = None
        for node, path in self.logs.items():
            if self.procs[node].poll() is not None:
                continue
            stamps = SENT.findall(path.read_text(errors="replace"))
            if stamps and (latest is None or stamps[-1] > latest[0]):
                latest = (stamps[-1], node)
        return latest[1] if latest else None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        time.sleep(1.0)  # what exits on its own has done so
        self.orphans = 0
        sessions = set(self.sessions)
        for pid, fields in processes():  # beats left behind (single-beat's after kill -9)
            if int(fields[3]) in sessions and fields[0] != "Z":
                self.orphans += 1
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def run_system(
    system: System, broker: str, work: Path, kills: int, stops: int, spacing: float
) -> Outcome:
    result = Outcome(system.label)
    queue = f"bench-{system.label.replace(' ', '-').replace(',', '')}"
    listener = Listener(broker, queue)
    system.env = {**system.env, "BEAT_QUEUE": queue}
    nodes = Nodes(system, work)
    killed_at: list[float] = []
    try:
        for node in ("a", "b", "c"):
            nodes.start(node)
        deadline = time.monotonic() + 60
        while not listener.sent:
            if time.monotonic() > deadline:
                raise TimeoutError("no beat sent anything within 60 s")
            time.sleep(0.1)
        began = time.monotonic()
        began_wall = time.time()
        events = [signal.SIGKILL] * kills
        for i in range(stops):  # the SIGTERMs spread among the kills
            events.insert((i + 1) * len(events) // (stops + 1), signal.SIGTERM)
        for signum in events:
            time.sleep(spacing)
            target = nodes.sender()
            if target is None:
                continue
            at = time.monotonic()
            nodes.procs[target].send_signal(signum)
            log(f"{system.label}: {signal.Signals(signum).name} to node {target}")
            if signum == signal.SIGKILL:
                killed_at.append(at)
            else:
                nodes.procs[target].wait(timeout=30)
            nodes.start(target)  # as systemd's Restart= would
        time.sleep(spacing)
        ended = time.monotonic()
    except (TimeoutError, OSError, subprocess.TimeoutExpired) as exc:
        result.error = str(exc)
        began = ended = time.monotonic()
        began_wall = time.time()
    finally:
        nodes.stop_all()
        listener.close()
    result.orphans = nodes.orphans
    elapsed = ended - began
    result.minutes = elapsed / 60
    for task, every in (("fast", FAST), ("slow", SLOW)):
        times = [t for t in listener.times(task) if began <= t <= ended]
        result.runs[task] = (len(times), elapsed / every)
        result.duplicates[task] = len(early_duplicates(times, every))
        result.gaps[task] = largest_gap(times)
    cron = [s for s in listener.sent if began_wall <= s.wall <= began_wall + elapsed]
    per_minute = cron_minutes(cron, "cron")
    boundaries = int((began_wall + elapsed) // 60) - int(began_wall // 60)
    result.runs["cron"] = (sum(per_minute.values()), float(boundaries))
    result.duplicates["cron"] = sum(n - 1 for n in per_minute.values() if n > 1)
    fast_all = listener.times("fast")
    result.kill_to_tick = [next((t for t in fast_all if t > k), ended) - k for k in killed_at]
    return result


def systems(kinds: list[str], urls: dict[str, str], ttl: float, broker: str) -> list[System]:
    """Every system to run: coordinator on each backend, then RedBeat and single-beat."""
    base = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{{work}}",
        "BEAT_BROKER_URL": broker,
        "BEAT_ENTRIES": ",".join(f"{k}={v or ''}" for k, v in ENTRIES.items()),
    }
    found = []
    for kind in kinds:
        kind_ttl = max(10.0, ttl) if kind == "consul" else ttl
        argv = [
            *(sys.executable, "-m", "coordinator", "--backend", kind, "--name", "beat"),
            *("--ttl", f"{kind_ttl:g}", "--grace", f"{kind_ttl / 5:g}", "--node-id", "{node}"),
            *("--", sys.executable, "-m", "celery", "-A", "proj", "beat"),
            *("-S", "coordinator.celery.Scheduler", "--loglevel", "info"),
        ]
        env = {**base, "COORDINATOR_URL": urls[kind]}
        found.append(System(f"coordinator, {kind}", kind, kind_ttl, argv, env))
    if "redis" in urls:
        try:
            celery = singlebeat.venv(
                f"redbeat-{REDBEAT}",
                [f"celery-redbeat=={REDBEAT}", f"celery[redis]=={CELERY}", "packaging"],
                "celery",
            )
            argv = [celery, "-A", "proj", "beat", "-S", "redbeat.RedBeatScheduler"]
            argv += ["--loglevel", "info"]
            env = {**base, "BEAT_REDBEAT_LOCK_TIMEOUT": str(int(ttl))}
            found.append(System(f"RedBeat {REDBEAT}", "redis", ttl, argv, env))
        except RuntimeError as exc:
            log(f"RedBeat left out: {exc}")
        try:
            sb = singlebeat.install()
            argv = [sb, sys.executable, "-m", "celery", "-A", "proj", "beat", "--loglevel", "info"]
            env = {
                **base,
                "SINGLE_BEAT_REDIS_SERVER": urls["redis"],
                "SINGLE_BEAT_IDENTIFIER": "beat",
                "SINGLE_BEAT_LOCK_TIME": str(int(ttl)),
                "SINGLE_BEAT_LOG_LEVEL": "warning",
            }
            found.append(System(f"single-beat {singlebeat.VERSION}", "redis", ttl, argv, env))
        except RuntimeError as exc:
            log(f"single-beat left out: {exc}")
    return found


def table(outcomes: list[Outcome], kills: int, stops: int, ttl: float) -> str:
    rows = [
        f"{kills} kill -9 and {stops} SIGTERM of the node that sent last, each node started "
        f"again at once; tasks every {FAST:g} s and {SLOW:g} s and a crontab every minute; "
        f"ttl {ttl:g} s (Consul 10 s)",
        "",
        "| system | runs / nominal (5 s, 20 s, cron) | early duplicates (5 s / 20 s / cron) "
        "| largest gap 5 s / 20 s | kill -9 to next 5 s run, p50 / max | orphans |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.error:
            rows.append(f"| {o.label} | failed: {o.error} | | | | |")
            continue
        runs = ", ".join(f"{n} / {nominal:.0f}" for n, nominal in o.runs.values())
        dups = " / ".join(str(o.duplicates[t]) for t in ("fast", "slow", "cron"))
        gaps = f"{o.gaps['fast']:.1f} s / {o.gaps['slow']:.1f} s"
        k = o.kill_to_tick
        kill = f"{percentile(k, 50):.1f} s / {max(k):.1f} s" if k else "-"
        rows.append(f"| {o.label} | {runs} | {dups} | {gaps} | {kill} | {o.orphans} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.celerybeat", description=__doc__)
    parser.add_argument("--backends", default=",".join(ALL), help="comma-separated (%(default)s)")
    parser.add_argument("--kills", type=int, default=5, help="kill -9 failovers (%(default)s)")
    parser.add_argument("--stops", type=int, default=2, help="SIGTERM handoffs (%(default)s)")
    parser.add_argument("--spacing", type=float, default=15.0, help="seconds between events")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease ttl (consul: at least 10)")
    parser.add_argument("--no-others", action="store_true", help="skip RedBeat and single-beat")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    kinds = [k for k in args.backends.split(",") if k]
    if unknown := [k for k in kinds if k not in ALL]:
        parser.error(f"unknown backend {', '.join(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="coordinator-celery-bench-"))
    servers: list[backends.Server] = []
    outcomes: list[Outcome] = []
    try:
        needed = sorted({*kinds, "redis"}, key=ALL.index)
        urls = {}
        for kind in needed:
            log(f"starting {kind}")
            server = backends.start(
                kind,
                max(10.0, args.ttl) if kind == "consul" else args.ttl,
                work / "servers" / kind,
                10,
            )
            servers.append(server)
            urls[kind] = server.url
        broker = urls["redis"].rsplit("/", 1)[0] + "/1"  # the broker in a database of its own
        chosen = systems(kinds, urls, args.ttl, broker)
        if args.no_others:
            chosen = [s for s in chosen if s.label.startswith("coordinator")]
        for system in chosen:
            sub = work / system.label.replace(" ", "-").replace(",", "")
            sub.mkdir(parents=True)
            (sub / "proj.py").write_text(APP)
            for node in ("a", "b", "c"):
                (sub / node).mkdir()
                (sub / node / "proj.py").write_text(APP)
            system.env["PYTHONPATH"] = system.env["PYTHONPATH"].replace("{work}", str(sub))
            log(f"{system.label}: 3 nodes, {args.kills} kill -9, {args.stops} SIGTERM")
            outcomes.append(run_system(system, broker, sub, args.kills, args.stops, args.spacing))
    finally:
        for server in servers:
            backends.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    text = table(outcomes, args.kills, args.stops, args.ttl)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
