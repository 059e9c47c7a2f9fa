"""The file backend as root in directories other users can write to: it never writes
through a link planted by someone else, and two users share a directory by its group.

These run as root (CI does); the second user is `nobody`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.backends.base import HolderInfo
from coordinator.backends.file import FileBackend
from coordinator.errors import BackendUnavailable, ConfigError
from tests.cluster import ROOT, run_cli
from tests.servers import in_ci

SECRET = "root-only secret\n"


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI=true and these tests need root", pytrace=False)
        pytest.skip("needs root, to plant files as another user")
    return pwd.getpwnam("nobody")


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory `nobody` can reach (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="coordinator-security-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A file only root may write, that a planted link points at."""
    path = tmp_path / "victim"
    path.write_text(SECRET)
    path.chmod(0o600)
    yield path
    assert path.read_text() == SECRET, "a planted link made root write into the victim"


def as_user(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        user=user.pw_uid,
        group=user.pw_gid,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT},
    )


def plant_link(user: pwd.struct_passwd, target: Path, link: Path) -> None:
    result = as_user(user, "ln", "-s", str(target), str(link))
    assert result.returncode == 0, result.stderr


def test_a_directory_owned_by_another_user_is_refused(
    nobody: pwd.struct_passwd, tmp_path: Path, victim: Path
) -> None:
    locks = tmp_path / "theirs"
    locks.mkdir()
    os.chown(locks, nobody.pw_uid, nobody.pw_gid)
    plant_link(nobody, victim, locks / "job.lock")
    result = run_cli("--url", str(locks), "--name", "job", "--", "true")
    assert result.returncode == 2, result.stderr
    assert "belongs to another user" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("planted", ["job.lock", "job.fence"])
def test_a_planted_symlink_is_never_followed(
    nobody: pwd.struct_passwd, tmp_path: Path, victim: Path, planted: str
) -> None:
    """A root-owned directory everyone may write to with the sticky bit, as /run/lock:
    another user plants a link where a file of ours goes."""
    locks = tmp_path / "shared"
    locks.mkdir()
    locks.chmod(0o1777)
    plant_link(nobody, victim, locks / planted)
    result = run_cli(
        "--url", str(locks), "--name", "job", "--wait-timeout", "1", "--", "true", timeout=30
    )
    assert result.returncode == 4, result.stderr  # cannot use the lock: gives up, no harm
    assert "Traceback" not in result.stderr
    assert (locks / planted).is_symlink()


def test_a_hard_link_is_refused(tmp_path: Path, victim: Path) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    os.link(victim, locks / "job.lock")
    backend = FileBackend(locks, ttl=3.0)
    with pytest.raises(BackendUnavailable, match="single link"):
        backend.acquire("job", HolderInfo(node_id="n"))
    backend.close()


def test_a_directory_writable_by_all_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    locks = tmp_path / "open"
    locks.mkdir()
    locks.chmod(0o777)
    with pytest.raises(ConfigError, match="sticky"):
        FileBackend(locks, ttl=3.0)


def test_status_does_not_create_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    result = run_cli("status", "--url", str(missing), "--name", "job")
    assert result.returncode == 1, result.stderr + result.stdout  # free: nothing holds it
    assert not missing.exists()


NOBODY_ACQUIRES = """
import sys, time
from pathlib import Path
from coordinator.backends.base import HolderInfo
from coordinator.backends.file import FileBackend
backend = FileBackend(Path(sys.argv[1]), ttl=3.0)
holder = backend.holder("job")
print("holder", holder.node_id if holder else None, holder.fencing_token if holder else None)
print("first", backend.acquire("job", HolderInfo(node_id="second-user")) is not None)
open(sys.argv[2], "w").close()  # root releases now
deadline = time.monotonic() + 10
while (lease := backend.acquire("job", HolderInfo(node_id="second-user"))) is None:
    assert time.monotonic() < deadline, "never got the lock"
    time.sleep(0.05)
print("token", lease.fencing_token)
backend.release(lease)
"""


def test_two_users_share_a_directory_through_its_group(
    nobody: pwd.struct_passwd, tmp_path: Path
) -> None:
    """The documented way: a directory owned by root, group shared, mode 2770 (setgid):
    the files are created group-writable, and each user excludes the other."""
    locks = tmp_path / "team"
    locks.mkdir()
    os.chown(locks, 0, nobody.pw_gid)
    locks.chmod(0o2770)
    root = FileBackend(locks, ttl=3.0)
    lease = root.acquire("job", HolderInfo(node_id="root-user"))
    assert lease is not None
    assert (locks / "job.lock").stat().st_mode & 0o777 == 0o660
    released = locks / "root-may-release"
    proc = subprocess.Popen(
        ["/usr/bin/python3", "-c", NOBODY_ACQUIRES, str(locks), str(released)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT},
    )
    try:
        deadline = 30.0
        while not released.exists():
            assert proc.poll() is None, proc.communicate()
            deadline -= 0.05
            assert deadline > 0
            time.sleep(0.05)
        root.release(lease)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        root.close()
    assert proc.returncode == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["holder"] == f"root-user {lease.fencing_token}"
    assert lines["first"] == "False"
    assert int(lines["token"]) > lease.fencing_token


if sys.platform != "linux":  # pragma: no cover - the project runs on Linux
    pytestmark = pytest.mark.skip("Linux only")
