"""The benchmark's --check: which results make a run wrong (CI runs it in quick mode)."""

from __future__ import annotations

from benchmarks.results import Results, problems
from benchmarks.scenarios import Scale, Timings
from benchmarks.tables import table


def test_a_clean_run_has_no_problem_and_a_slow_one_neither() -> None:
    res = Results("redis", "coordinator", 5.0, handoff=Timings(samples=[9.0, 9.5]))
    assert problems(res) == []
    assert table(res).misses() and table(res).problems == []  # slow is a miss, not wrong


def test_overlaps_orphans_errors_and_skips_are_problems() -> None:
    res = Results("consul", "coordinator", 5.0)
    res.failover = Timings(samples=[1.0], overlaps=1, orphans=2)
    res.scale = [Scale(10, handoffs=Timings(error="the holder never started"))]
    res.idle.error = "no renewal seen"
    found = problems(res)
    assert len(found) == 4, found
    assert any("two children at once" in p for p in found)
    assert any("left after kill -9" in p for p in found)
    assert any("scale 10: the holder never started" in p for p in found)
    skipped = Results("postgres", "single-beat", 5.0, skipped="no server")
    assert problems(skipped) == ["single-beat on postgres: not run: no server"]
    assert table(skipped).problems == problems(skipped)
    peer = Results("redis", "single-beat", 5.0, failover=Timings(samples=[5.0], orphans=2))
    assert problems(peer) == []  # a peer's orphans are its own, shown in the comparison
