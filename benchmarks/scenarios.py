"""The measurements: each starts real supervisors, acts on them, and reads the
children's records, /proc and the counting proxies."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.measure import (
    children,
    cpu_seconds,
    mem_available_mb,
    pss_mb,
    rss_mb,
    tree_cpu_seconds,
)
from benchmarks.procs import CHILD, Cluster, Coordinator, Kind
from benchmarks.proxy import CountingProxy


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {message}\n")
    sys.stderr.flush()


@dataclass
class Timings:
    samples: list[float] = field(default_factory=list)
    overlaps: int = 0  # a child started while another was still running
    orphans: int = 0  # children still alive 1 s after their supervisor was killed
    lost: int = 0  # rounds skipped: the holder had died before (killed from outside)
    error: str = ""


def warm(kind: Kind, name: str, work: Path, timeout: float) -> None:
    """Acquire and release `name` once, unmeasured. The first acquisition of a name on
    Redis and Consul waits the safety delay (no record of the lock yet); later ones do
    not. It also fills the bytecode cache."""
    if isinstance(kind, Coordinator):
        kind = replace(kind, extra=("--safety-delay", "0"))
    cluster = Cluster(kind, name, work / "warm")
    try:
        cluster.spawn()
        cluster.wait_start(0, timeout)
    finally:
        cluster.stop_all()


def child_start(work: Path, rounds: int) -> list[float]:
    """How long the child itself takes from spawn to its record, with no supervisor."""
    records, lock = work / "baseline.records", work / "baseline.flock"
    samples = []
    for _ in range(rounds):
        records.unlink(missing_ok=True)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-S", "-E", CHILD, str(records), str(lock)])
        while not records.exists() or not records.read_text().strip():
            time.sleep(0.002)
        samples.append(float(records.read_text().split()[4]) - started)
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    return samples


def start_to_exec(
    kind: Kind, names: Callable[[int], str], work: Path, rounds: int, timeout: float
) -> Timings:
    """From spawning the supervisor to its child's first act, nobody else contending."""
    result = Timings()
    for i in range(rounds):
        cluster = Cluster(kind, names(i), work / "start" / str(i))
        try:
            started = time.monotonic()
            cluster.spawn()
            record = cluster.wait_start(0, timeout)
            result.samples.append(record.at - started)
        except (TimeoutError, RuntimeError) as exc:
            result.error = str(exc)
            break
        finally:
            cluster.stop_all()
    return result


def start_to_exit(
    kinds: list[tuple[Kind, Callable[[int], str]]], work: Path, rounds: int, timeout: float
) -> list[Timings]:
    """From spawning a supervisor whose command is `true` to the supervisor's exit: the
    lock taken, the command run, the lock released. The kinds take turns, round by
    round, so a change in the machine's load falls on all of them alike."""
    results = [Timings() for _ in kinds]
    true = shutil.which("true") or "/bin/true"
    directory = work / "exit"
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(rounds):
        for n, ((kind, names), result) in enumerate(zip(kinds, results, strict=True)):
            if result.error:
                continue
            argv, env = kind.command(names(i), [true])
            log = directory / f"{n}-{i}.log"
            with open(log, "wb") as out:
                started = time.monotonic()
                proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    result.error = f"{kind.label} did not exit within {timeout:g}s"
                    continue
                elapsed = time.monotonic() - started
            if code != 0:
                tail = log.read_text(errors="replace")[-300:]
                result.error = f"{kind.label} exited with {code}: {tail}"
                continue
            result.samples.append(elapsed)
    return results


def watchdog_of(pid: int) -> int | None:
    """The watchdog process a coordinator holder started, if any."""
    for child in children(pid):
        try:
            if b"watchdog" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


@dataclass
class Idle:
    window: float = 0.0
    ttl: float = 0.0
    holder_ops: Counter[str] = field(default_factory=Counter)
    standby_ops: Counter[str] = field(default_factory=Counter)  # all standbys together
    standbys: int = 0
    holder_cpu: float = 0.0  # fraction of one core
    standby_cpu: float = 0.0  # per standby
    holder_rss: float = 0.0  # MiB
    standby_rss: float = 0.0  # the largest
    holder_pss: float | None = None
    standby_pss: float | None = None
    watchdog_rss: float | None = None  # the holder's watchdog process, if it has one
    watchdog_pss: float | None = None
    counted: bool = False
    error: str = ""

    def per_ttl(self, ops: Counter[str], members: int) -> float:
        return sum(ops.values()) / members / (self.window / self.ttl)


def idle(
    holder_kind: Kind,
    standby_kind: Kind,
    name: str,
    work: Path,
    standbys: int,
    window: float,
    ttl: float,
    proxies: tuple[CountingProxy, CountingProxy] | None,
) -> Idle:
    """One holder and a few standbys left alone: requests each sends (through its own
    counting proxy), CPU time and resident memory of the supervisor processes."""
    result = Idle(window=window, ttl=ttl, standbys=standbys, counted=proxies is not None)
    cluster = Cluster(holder_kind, name, work / "idle")
    try:
        holder = cluster.spawn()
        cluster.wait_start(0, 3 * ttl + 10)
        waiting = [cluster.spawn(standby_kind) for _ in range(standbys)]
        cluster.wait_ready(waiting, 60)
        # Past each standby's first wait and the holder's first renewal (which loads
        # the renewal script into a fresh Redis).
        time.sleep(max(1.0, ttl / 3 + 1.0))
        if proxies:
            for proxy in proxies:
                proxy.reset()
        cpu0 = {m.pid: cpu_seconds(m.pid) for m in cluster.members}
        started = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - started
        cpu = {m.pid: (cpu_seconds(m.pid) - cpu0[m.pid]) / elapsed for m in cluster.members}
        if proxies:
            result.holder_ops, result.standby_ops = proxies[0].counts(), proxies[1].counts()
        result.window = elapsed
        result.holder_cpu = cpu[holder.pid]
        result.standby_cpu = sum(cpu[m.pid] for m in waiting) / standbys
        result.holder_rss = rss_mb(holder.pid)
        result.standby_rss = max(rss_mb(m.pid) for m in waiting)
        result.holder_pss = pss_mb(holder.pid)
        pss = [p for m in waiting if (p := pss_mb(m.pid)) is not None]
        result.standby_pss = max(pss) if pss else None
        if (watchdog := watchdog_of(holder.pid)) is not None:
            result.watchdog_rss = rss_mb(watchdog)
            result.watchdog_pss = pss_mb(watchdog)
        if cluster.holder() is not holder or len(cluster.records()) != 1:
            result.error = "the lock changed hands during the idle window"
        if any(m.proc.poll() is not None for m in cluster.members):
            result.error = "a supervisor exited during the idle window"
    except (TimeoutError, RuntimeError, OSError, ValueError) as exc:
        result.error = str(exc)
    finally:
        cluster.stop_all()
    return result


def form(cluster: Cluster, standbys: int, ttl: float) -> None:
    """Start a holder and `standbys` standbys."""
    cluster.spawn()
    cluster.wait_start(len(cluster.records()), 3 * ttl + 10)
    cluster.wait_ready([cluster.spawn() for _ in range(standbys)], 60)
    time.sleep(0.5)


def _replace_standby(cluster: Cluster) -> None:
    member = cluster.spawn()
    cluster.wait_ready([member], 60)
    time.sleep(0.3)


def handoffs(
    cluster: Cluster, rounds: int, timeout: float, replace_standby: bool = True
) -> Timings:
    """SIGTERM the holder; time until the next child's first act."""
    result = Timings()
    for i in range(rounds):
        try:
            holder, count = cluster.holder(), len(cluster.records())
            if holder.proc.poll() is not None:  # killed by something else: not a handoff
                result.lost += 1
                cluster.wait_start(count, timeout)
                continue
            started = time.monotonic()
            holder.proc.send_signal(signal.SIGTERM)
            record = cluster.wait_start(count, timeout)
            result.samples.append(record.at - started)
            result.overlaps += record.overlap
            cluster.stop(holder)
            if replace_standby:
                _replace_standby(cluster)
            else:
                time.sleep(0.5)
            log(f"  handoff {i + 1}/{rounds}: {result.samples[-1] * 1000:.0f} ms")
        except (TimeoutError, RuntimeError) as exc:
            result.error = str(exc)
            break
    return result


def failovers(cluster: Cluster, rounds: int, timeout: float, seed: int = 6) -> Timings:
    """kill -9 the holder at a random point between two of its renewals (a crash does
    not wait for a good moment); time until the next child's first act. Also counts
    children left running by their killed supervisor."""
    result = Timings()
    rng = random.Random(seed)
    for i in range(rounds):
        try:
            holder, count = cluster.holder(), len(cluster.records())
            time.sleep(rng.uniform(0, holder.kind.beat))
            child = cluster.records()[-1].pid
            started = time.monotonic()
            holder.proc.send_signal(signal.SIGKILL)
            holder.proc.wait()
            time.sleep(1.0)
            orphan = cluster.is_our_child(child)
            result.orphans += orphan
            record = cluster.wait_start(count, timeout)
            result.samples.append(record.at - started)
            result.overlaps += record.overlap
            cluster.kill_children()
            _replace_standby(cluster)
            log(f"  failover {i + 1}/{rounds}: {result.samples[-1]:.2f} s")
        except (TimeoutError, RuntimeError) as exc:
            result.error = str(exc)
            break
    return result


@dataclass
class Scale:
    wanted: int
    standbys: int = 0
    spawn_seconds: float = 0.0
    backend_idle_cpu: float | None = None  # fraction of one core
    backend_handoff_cpu: float | None = None
    standbys_cpu: float = 0.0  # all standbys together, fraction of one core
    supervisor_rss: float = 0.0  # MiB, mean over the standbys
    window: float = 0.0
    handoffs: Timings = field(default_factory=Timings)
    stopped_early: str = ""
    lost: str = ""  # standbys that died without being told to


def scale(
    kind: Kind,
    name: str,
    work: Path,
    wanted: int,
    rounds: int,
    window: float,
    ttl: float,
    server_pid: int | None,
    batch: int = 25,
    reserve_mb: float = 3072,
) -> Scale:
    """`wanted` standbys on one backend: the backend's CPU while they idle and during
    handoffs, and the handoff times. Spawning stops early when memory runs short."""
    result = Scale(wanted)
    cluster = Cluster(kind, name, work / f"scale-{wanted}")

    def backend_cpu() -> float:
        return tree_cpu_seconds(server_pid) if server_pid else 0.0

    try:
        form(cluster, 0, ttl)
        started = time.monotonic()
        while result.standbys < wanted:
            size = min(batch, wanted - result.standbys)
            rss = rss_mb(cluster.members[-1].pid)
            if mem_available_mb() < reserve_mb + size * rss * 1.5:
                result.stopped_early = f"memory: stopped at {result.standbys} standbys"
                break
            batch_of = [cluster.spawn() for _ in range(size)]
            cluster.wait_ready(batch_of, 30 + size * 2, allow_exits=True)
            result.standbys += size
            log(f"  {result.standbys}/{wanted} standbys")
        result.spawn_seconds = time.monotonic() - started
        time.sleep(max(2.0, ttl / 2))  # let the spawn's own load pass
        holder = cluster.holder()
        standbys = [m for m in cluster.members if m is not holder and m.proc.poll() is None]
        if len(standbys) < result.standbys:
            result.lost = f"{result.standbys - len(standbys)} standbys died while starting"
        cpu0 = backend_cpu()
        own0 = {m.pid: cpu_seconds(m.pid) for m in standbys}
        started = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - started
        result.backend_idle_cpu = (backend_cpu() - cpu0) / elapsed if server_pid else None
        gone = [m for m in standbys if m.proc.poll() is not None]
        if gone:
            # Nothing here stops a standby; on a shared machine something else did.
            codes = sorted({m.proc.returncode for m in gone})
            result.lost += f"{'; ' if result.lost else ''}{len(gone)} standbys died while idle"
            result.lost += f" (exit status {', '.join(map(str, codes))})"
            standbys = [m for m in standbys if m not in gone]
        result.standbys = len(standbys)
        own = sum(cpu_seconds(m.pid) - own0[m.pid] for m in standbys)
        result.standbys_cpu = own / elapsed
        result.window = elapsed
        result.supervisor_rss = sum(rss_mb(m.pid) for m in standbys) / len(standbys)
        cpu0, started = backend_cpu(), time.monotonic()
        result.handoffs = handoffs(cluster, rounds, 3 * ttl + 10, replace_standby=False)
        elapsed = time.monotonic() - started
        result.backend_handoff_cpu = (backend_cpu() - cpu0) / elapsed if server_pid else None
    except (TimeoutError, RuntimeError, OSError, ValueError) as exc:
        result.stopped_early = str(exc)
    finally:
        cluster.stop_all(timeout=60)
    return result
