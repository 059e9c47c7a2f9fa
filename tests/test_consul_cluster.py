"""A Consul cluster (three servers, a client agent per node) while a lease is held: a
short round of the fault suite's cluster bench (tests/faults/consul_cluster.py). The
flock probe judges overlap; the printed table has the takeover times
(docs/backends/consul.md quotes them). `python -m tests.faults --backends
consul-cluster --rounds N` is the long run, with every cluster fault.

COORDINATOR_CLUSTER_FAULTS picks the faults (comma-separated; CI runs the three below),
COORDINATOR_FAULT_ROUNDS and COORDINATOR_FAULT_SEED the rounds and the order.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.faults.__main__ import verdict
from tests.faults.consul_cluster import run

CI_FAULTS = "leader-killed,client-agent-stopped,client-agent-leave"


def test_cluster_faults_meet_the_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.environ.get("COORDINATOR_TEST_CONSUL_URL"):
        pytest.skip("needs consul agents of its own to kill")
    faults = os.environ.get("COORDINATOR_CLUSTER_FAULTS", CI_FAULTS).split(",")
    rounds = int(os.environ.get("COORDINATOR_FAULT_ROUNDS", "1"))
    seed = int(os.environ.get("COORDINATOR_FAULT_SEED", random.randrange(1 << 32)))
    text, summaries = run(faults, rounds, seed, tmp_path)
    with capsys.disabled():
        print(f"\n{text}")
    assert {s.fault for s in summaries} >= set(faults), text
    assert all(s.rounds == rounds for s in summaries if s.fault != "history"), text
    failing = [s.fault for s in summaries if verdict(s) != "ok"]
    assert not failing, text
