"""The fault-injection suite (tests/faults) in its quick mode, one test per backend.

Each test starts its own server, three supervisors, and applies every fault a few
times in shuffled order; it fails unless every row of the printed table meets the bar.
COORDINATOR_FAULT_ROUNDS and COORDINATOR_FAULT_SEED change the rounds and the order;
`scripts/faults --long` is the long run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.conftest import BACKENDS
from tests.faults.__main__ import QUICK_ROUNDS, QUICK_ROUNDS_FOR, run_backend, verdict
from tests.faults.faults import FAULTS


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_fault_meets_the_bar(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rounds = int(
        os.environ.get("COORDINATOR_FAULT_ROUNDS", QUICK_ROUNDS_FOR.get(kind, QUICK_ROUNDS))
    )
    seed = int(os.environ.get("COORDINATOR_FAULT_SEED", random.randrange(1 << 32)))
    text, summaries = run_backend(kind, list(FAULTS), rounds, seed, tmp_path)
    with capsys.disabled():
        print(f"\n{text}")
    assert summaries, "no fault ran"
    assert all(s.rounds == rounds for s in summaries if s.fault != "history"), text
    failing = [s.fault for s in summaries if verdict(s) != "ok"]
    assert not failing, text
