"""The checker: reads the probes' records and judges each round.

Two probes at once show up as a "violation" record: the newer probe found the flock
held. With --wait-lock it then waits for the flock, so its "start" record marks the
moment every process of the earlier child (grandchildren included, they share the
lock) was gone: the overlap is the time between the two.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.measure import percentile
from tests.cluster import Record


def overlap(events: list[Record], pid: int) -> float:
    """How long probe `pid` ran while an earlier child still held the lock."""
    violation = [e.at for e in events if e.pid == pid and e.event == "violation"]
    if not violation:
        return 0.0
    start = [e.at for e in events if e.pid == pid and e.event == "start"]
    return (start[0] if start else math.inf) - violation[0]


def history_problems(events: list[Record], data_lost_at: Sequence[float] = ()) -> list[str]:
    """Whole-run invariants: fencing tokens strictly increase, and no probe took the
    flock before the previous one recorded its stop (when it lived to record one).
    `data_lost_at`: moments the store lost all of its data where the backend documents
    that tokens may go back (Consul's dev agent); a drop across one is not counted."""
    problems = []
    starts = [e for e in events if e.event == "start"]
    for before, after in itertools.pairwise(starts):
        excused = any(before.at < lost < after.at for lost in data_lost_at)
        if int(after.token) <= int(before.token) and not excused:
            problems.append(
                f"fencing token went from {before.token} (pid {before.pid}) "
                f"to {after.token} (pid {after.pid})"
            )
        stops = [e.at for e in events if e.pid == before.pid and e.event == "stop"]
        if stops and stops[0] > after.at:
            problems.append(f"pid {after.pid} took the flock before pid {before.pid} stopped")
    return problems


@dataclass
class Round:
    fault: str
    takeover: float | None = None  # seconds from the fault (or the heal) to a new child
    overlap: float = 0.0
    ran_after_resume: float | None = None  # node pause: the old child's life after SIGCONT
    orphans: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Summary:
    fault: str
    rounds: int
    overlaps: int
    longest_overlap: float
    takeover_p50: float | None
    takeover_p99: float | None
    orphans: int
    problems: list[str]
    ran_after_resume: float | None

    @classmethod
    def of(cls, fault: str, rounds: list[Round]) -> Summary:
        takeovers = [r.takeover for r in rounds if r.takeover is not None]
        resumed = [r.ran_after_resume for r in rounds if r.ran_after_resume is not None]
        problems = [p for r in rounds for p in r.problems]
        problems += [
            f"no child ran again after round {i + 1}"
            for i, r in enumerate(rounds)
            if r.takeover is None and not r.problems
        ]
        return cls(
            fault=fault,
            rounds=len(rounds),
            overlaps=sum(1 for r in rounds if r.overlap > 0),
            longest_overlap=max((r.overlap for r in rounds), default=0.0),
            takeover_p50=percentile(takeovers, 50) if takeovers else None,
            takeover_p99=percentile(takeovers, 99) if takeovers else None,
            orphans=sum(r.orphans for r in rounds),
            problems=problems,
            ran_after_resume=max(resumed) if resumed else None,
        )
