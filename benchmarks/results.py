"""What one supervisor kind measured on one backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.measure import percentile
from benchmarks.scenarios import Idle, Scale, Timings

GRACE = 1.0  # seconds from SIGTERM to SIGKILL of a child, for every supervisor


@dataclass
class Results:
    kind: str
    label: str
    ttl: float
    start: Timings = field(default_factory=Timings)
    exit: Timings = field(default_factory=Timings)  # start to exit, running `true`
    idle: Idle = field(default_factory=Idle)
    handoff: Timings = field(default_factory=Timings)
    failover: Timings = field(default_factory=Timings)
    scale: list[Scale] = field(default_factory=list)
    server_alone_cpu: float | None = None  # the backend's CPU with no client
    child_start: list[float] = field(default_factory=list)  # the child alone
    skipped: str = ""


def p50(t: Timings) -> float:
    return percentile(t.samples, 50)


def p99(t: Timings) -> float:
    return percentile(t.samples, 99)


def problems(res: Results) -> list[str]:
    """What makes a run wrong, not just slow: a supervisor kind that did not run, and
    for coordinator a scenario that failed, two children at once or a child left after
    kill -9 (the peers' own overlaps and orphans are what the comparison shows). Missed
    speed and memory targets are not in it: they depend on the machine."""
    where = f"{res.label} on {res.kind}"
    if res.skipped:
        return [f"{where}: not run: {res.skipped}"]
    if res.label != "coordinator":
        return []
    found = []
    timings = {
        "start": res.start,
        "start to exit": res.exit,
        "handoff": res.handoff,
        "failover": res.failover,
    }
    for sc in res.scale:
        timings[f"scale {sc.wanted}"] = sc.handoffs
    for what, t in timings.items():
        if t.error:
            found.append(f"{where}: {what}: {t.error}")
        if t.overlaps:
            found.append(f"{where}: {what}: {t.overlaps} time(s) two children at once")
        if t.orphans:
            found.append(f"{where}: {what}: {t.orphans} child(ren) left after kill -9")
    if res.idle.error:
        found.append(f"{where}: idle: {res.idle.error}")
    return found
