"""The child's process group: nothing of it is alive once kill_stragglers returns."""

from __future__ import annotations

import os
import sys

from coordinator.child import Child, group_members
from tests.cluster import alive, wait_until

FORKS_AND_EXITS = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    time.sleep(60)\n"  # the grandchild outlives the child
    "print(os.getpid(), flush=True)\n"
)


def test_stragglers_are_dead_when_kill_stragglers_returns() -> None:
    child = Child([sys.executable, "-c", FORKS_AND_EXITS], dict(os.environ))
    wait_until(lambda: child.poll() is not None, timeout=10)
    wait_until(lambda: len(group_members(child.pid)) == 1, timeout=10)
    [grandchild] = group_members(child.pid)
    assert child.kill_stragglers() is True
    assert not alive(grandchild)
    assert group_members(child.pid) == []


def test_an_empty_group_returns_at_once() -> None:
    child = Child(["true"], dict(os.environ))
    wait_until(lambda: child.poll() is not None, timeout=10)
    assert child.kill_stragglers(timeout=0) is True
