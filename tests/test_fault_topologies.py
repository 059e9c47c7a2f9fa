"""The fault benches beyond one plain server (tests/faults/benches.py: a primary and
a standby, PgBouncer, TLS, and any other registered bench): a short round of each
bench's `quick` faults, on servers the bench starts, judged as the plain benches are
(no two children at once, a new child within the bound, no orphans, tokens only
grow). COORDINATOR_FAULT_SEED fixes the order; `scripts/faults --long` runs every
fault of every bench 25 times."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.faults.__main__ import run_backend, verdict
from tests.faults.benches import registered

BENCHES = registered()


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_short_round_meets_the_bar(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kind = name.split("-")[0]
    if os.environ.get(f"COORDINATOR_TEST_{kind.upper()}_URL"):
        pytest.skip(f"the {name} bench needs servers of its own")
    spec = BENCHES[name]
    faults = list(spec.quick or spec.names)
    seed = int(os.environ.get("COORDINATOR_FAULT_SEED", random.randrange(1 << 32)))
    text, summaries = run_backend(name, faults, spec.quick_rounds, seed, tmp_path)
    with capsys.disabled():
        print(f"\n{text}")
    assert [s.fault for s in summaries if s.fault != "history"] == faults, text
    assert all(s.rounds == spec.quick_rounds for s in summaries if s.fault != "history"), text
    failing = [s.fault for s in summaries if verdict(s) != "ok"]
    assert not failing, text


def test_every_bench_names_its_backend_and_known_faults() -> None:
    from tests.faults.faults import FAULTS

    for name, spec in BENCHES.items():
        assert name.split("-")[0] in ("file", "redis", "postgres", "consul"), name
        assert set(spec.faults) <= set(FAULTS), (name, spec.faults)
        assert set(spec.quick or ()) <= set(spec.names), (name, spec.quick)
