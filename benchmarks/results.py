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
