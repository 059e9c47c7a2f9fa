"""The watchdog process on its own: it kills a process group at the moment it was
given unless that moment moves on, and when its supervisor's end of the pipe closes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from coordinator.watchdog import Watchdog


@pytest.fixture
def group() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def dog() -> Iterator[Watchdog]:
    watchdog = Watchdog()
    yield watchdog
    watchdog.disarm()
    watchdog.close()


def test_kills_the_group_when_the_moment_passes(
    dog: Watchdog, group: subprocess.Popen[bytes]
) -> None:
    start = time.monotonic()
    dog.arm(group.pid, start + 0.5)
    assert group.wait(timeout=10) == -signal.SIGKILL
    assert 0.45 < time.monotonic() - start < 2.0


def test_a_later_moment_keeps_the_child_running(
    dog: Watchdog, group: subprocess.Popen[bytes]
) -> None:
    start = time.monotonic()
    dog.arm(group.pid, start + 0.5)
    time.sleep(0.2)
    dog.extend(start + 1.5)
    time.sleep(0.8)
    assert group.poll() is None
    assert group.wait(timeout=10) == -signal.SIGKILL
    assert time.monotonic() - start >= 1.45


def test_leaves_the_group_alone_once_idle(dog: Watchdog, group: subprocess.Popen[bytes]) -> None:
    dog.arm(group.pid, time.monotonic() + 0.3)
    dog.disarm()
    time.sleep(0.6)
    dog.close()  # end of file while idle: nothing to kill
    assert group.poll() is None


def test_supervisor_gone_while_armed_kills_at_once(
    dog: Watchdog, group: subprocess.Popen[bytes]
) -> None:
    dog.arm(group.pid, time.monotonic() + 60)
    start = time.monotonic()
    dog.close()  # what the kernel does to the pipe when the supervisor dies
    assert group.wait(timeout=10) == -signal.SIGKILL
    assert time.monotonic() - start < 2.0


def test_a_killed_watchdog_is_replaced_with_the_current_moment(
    dog: Watchdog, group: subprocess.Popen[bytes]
) -> None:
    start = time.monotonic()
    dog.arm(group.pid, start + 60)
    assert dog.process is not None
    dog.process.kill()
    dog.process.wait()
    dog.extend(start + 0.5)  # finds the pipe broken, starts another, tells it everything
    assert group.wait(timeout=10) == -signal.SIGKILL
    assert time.monotonic() - start < 5.0
