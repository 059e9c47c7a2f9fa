"""Supervisors as real processes: coordinator or single-beat, each running the
benchmark child, and the records the children leave."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.singlebeat import cache_dir
from coordinator.child import alive

ROOT = Path(__file__).resolve().parent.parent
CHILD = str(Path(__file__).with_name("child.py"))


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a supervisor: bytecode cached as for an installed package
    (in a directory of the benchmark's cache, not beside the sources)."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(cache_dir() / "pycache"), **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@dataclass(frozen=True)
class Coordinator:
    """`coordinator --backend KIND --url URL --name NAME --ttl T --grace G -- child`."""

    backend: str
    url: str
    ttl: float
    grace: float
    extra: tuple[str, ...] = ()
    label: str = "coordinator"
    python: str = ""  # the interpreter; default: this one

    @property
    def beat(self) -> float:
        """Seconds between two renewals of the holder."""
        return self.ttl / 3

    def command(self, name: str, child: list[str]) -> tuple[list[str], dict[str, str]]:
        # The URL goes in the environment: it may hold a password, and argv is public.
        argv = [
            *(self.python or sys.executable, "-m", "coordinator"),
            *("--backend", self.backend, "--name", name),
            *("--ttl", f"{self.ttl:g}", "--grace", f"{self.grace:g}", *self.extra),
            "--",
            *child,
        ]
        return argv, python_env(PYTHONPATH=str(ROOT), COORDINATOR_URL=self.url)

    def standing_by(self, member: Member) -> bool:
        return "standing by" in member.output()


@dataclass(frozen=True)
class SingleBeat:
    """single-beat from its own virtualenv, configured by its environment variables."""

    executable: str
    url: str
    port: int
    ttl: int
    label: str = "single-beat"
    beat: float = 1.0  # SINGLE_BEAT_HEARTBEAT_INTERVAL, left at its default

    def command(self, name: str, child: list[str]) -> tuple[list[str], dict[str, str]]:
        env = python_env(
            SINGLE_BEAT_REDIS_SERVER=self.url,
            SINGLE_BEAT_IDENTIFIER=name,
            SINGLE_BEAT_LOCK_TIME=str(self.ttl),
            SINGLE_BEAT_LOG_LEVEL="warning",
        )
        env.pop("PYTHONPATH", None)
        return [self.executable, *child], env

    def standing_by(self, member: Member) -> bool:
        # It logs nothing while waiting: it stands by once connected to Redis and
        # through its first 1 s tick (a SET NX).
        return time.monotonic() - member.spawned > 1.2 and connected(member.pid, self.port)


@dataclass(frozen=True)
class ConsulLock:
    """`consul lock PREFIX child...`, a subcommand of the consul binary the tests build.
    Its session TTL (15 s) and lock-delay (15 s) are fixed: no option changes them."""

    executable: str
    url: str
    label: str = "consul lock"
    beat: float = 7.5  # it renews its session every TTL / 2
    ttl: float = 15.0

    def command(self, name: str, child: list[str]) -> tuple[list[str], dict[str, str]]:
        # No shell, so the child is its direct child (the records name it as parent).
        argv = [
            *(self.executable, "lock", "-shell=false", "-verbose"),
            f"-http-addr={self.url}",
            f"bench-consul-lock/{name}",
            *child,
        ]
        return argv, python_env()

    def standing_by(self, member: Member) -> bool:
        return "Attempting lock acquisition" in member.output()


Kind = Coordinator | SingleBeat | ConsulLock


def connected(pid: int, port: int) -> bool:
    """True if the process has an established TCP connection to 127.0.0.1:port."""
    try:
        inodes = {
            os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
        }
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                remote_port = int(cols[2].rsplit(":", 1)[1], 16)
                if cols[3] == "01" and remote_port == port and cols[9] in inodes:
                    return True
    return False


@dataclass
class Member:
    proc: subprocess.Popen[bytes]
    log: Path
    kind: Kind
    spawned: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Record:
    event: str
    pid: int
    ppid: int
    overlap: bool
    at: float


class Cluster:
    """Supervisors of one kind contending for one name."""

    def __init__(self, kind: Kind, name: str, work: Path) -> None:
        self.kind, self.name = kind, name
        self.work = work / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.records_path = self.work / "records"
        self.lock_path = self.work / "child.flock"
        self.members: list[Member] = []
        self.child = [
            sys.executable,
            "-S",
            "-E",
            CHILD,
            str(self.records_path),
            str(self.lock_path),
        ]

    def spawn(self, kind: Kind | None = None) -> Member:
        kind = kind or self.kind
        argv, env = kind.command(self.name, self.child)
        log = self.work / f"supervisor-{len(self.members)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        member = Member(proc, log, kind)
        self.members.append(member)
        return member

    def records(self, event: str = "start") -> list[Record]:
        try:
            lines = self.records_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            kind, pid, ppid, overlap, at = line.split()
            if kind == event:
                out.append(Record(kind, int(pid), int(ppid), overlap == "1", float(at)))
        return out

    def wait_start(self, count: int, timeout: float) -> Record:
        """The start record number `count` (0-based), once it exists."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            starts = self.records()
            if len(starts) > count:
                return starts[count]
            time.sleep(0.01)
        raise TimeoutError(f"{self.name}: no child started within {timeout:g}s")

    def holder(self) -> Member:
        last = self.records()[-1]
        return next(m for m in self.members if m.pid == last.ppid)

    def ready(self, member: Member) -> bool:
        return member.proc.poll() is None and member.kind.standing_by(member)

    def wait_ready(self, members: list[Member], timeout: float, allow_exits: bool = False) -> None:
        """Wait until every member stands by. A member that exits meanwhile is an error,
        or with `allow_exits` (killed from outside, on a shared machine) left out."""
        end = time.monotonic() + timeout
        pending = list(members)
        while pending:
            pending = [m for m in pending if not self.ready(m)]
            for m in pending:
                if m.proc.poll() is not None and not allow_exits:
                    tail = m.output()[-400:]
                    raise RuntimeError(f"{self.name}: a supervisor exited early: {tail}")
            pending = [m for m in pending if m.proc.poll() is None]
            if pending and time.monotonic() > end:
                raise TimeoutError(f"{self.name}: {len(pending)} supervisors not standing by")
            time.sleep(0.05)

    def live(self) -> list[Member]:
        return [m for m in self.members if m.proc.poll() is None]

    def stop(self, member: Member, timeout: float = 15.0) -> None:
        if member.proc.poll() is None:
            member.proc.send_signal(signal.SIGTERM)
        try:
            member.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            member.proc.kill()
            member.proc.wait()

    def stop_all(self, timeout: float = 20.0) -> None:
        for member in self.members:
            if member.proc.poll() is None:
                with contextlib.suppress(OSError):
                    member.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for member in self.members:
            try:
                member.proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()
        self.kill_children()

    def kill_children(self) -> None:
        """Children still alive after their supervisors: single-beat leaves its child
        running when it is killed."""
        for record in self.records():
            if self.is_our_child(record.pid) and not any(m.pid == record.ppid for m in self.live()):
                with contextlib.suppress(OSError):
                    os.kill(record.pid, signal.SIGKILL)

    def is_our_child(self, pid: int) -> bool:
        """Alive, and still the child this cluster started (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return alive(pid) and str(self.records_path).encode() in cmdline
