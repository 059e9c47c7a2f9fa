"""Real supervisors on one backend, with the means to break things around them.

Each node is a `coordinator` process running the probe child (which forks a
grandchild sharing its flock). On network backends each node reaches the server
through a Proxy of its own, so one node can be cut off alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from coordinator.child import processes
from tests.cluster import PROBE, Record, alive, cli_env, read_records
from tests.faults.proxy import Proxies, Proxy
from tests.servers import ServerProcess
from tests.store import Store

NAME = "faults"


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    return [child for child, fields in processes() if int(fields[1]) == pid]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
        return ""


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@dataclass
class Node:
    index: int
    url: str
    proxy: Proxy | Proxies | None
    process: subprocess.Popen[bytes] | None = None
    expected_exit: bool = False  # a fault told it to leave

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def watchdog(self) -> int | None:
        assert self.process is not None
        for pid in children(self.process.pid):
            if "watchdog.py" in cmdline(pid):
                return pid
        return None


class Bench:
    """N supervisors for one backend, the probe's records, and the server to break."""

    def __init__(
        self,
        store: Store,
        server: ServerProcess | None,
        tmp: Path,
        nodes: int = 3,
    ) -> None:
        self.store, self.server, self.tmp = store, server, tmp
        self.ttl = store.ttl
        self.grace = 3.0 if self.ttl >= 10 else 1.0
        self.log = tmp / "probe.log"
        self.flock = tmp / "probe.flock"
        self.ignore_term = tmp / "ignore-term"
        self.slow_stop = tmp / "slow-stop"
        self.data_lost_at: list[float] = []  # when the store lost all of its data
        self.nodes = [self._node(i) for i in range(nodes)]

    @property
    def kind(self) -> str:
        return self.store.kind

    @property
    def networked(self) -> bool:
        return self.kind != "file"

    def _node(self, index: int) -> Node:
        if not self.networked:
            return Node(index, self.store.url, None)
        parts = urlsplit(self.store.url)
        assert parts.port is not None, self.store.url
        proxy = Proxy(parts.port, parts.hostname or "127.0.0.1")
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
        if proxy.host != parts.hostname:  # a server elsewhere: the proxy is on loopback
            userinfo = parts.netloc.rpartition("@")[0]
            netloc = (userinfo + "@" if userinfo else "") + f"{proxy.host}:{proxy.port}"
        return Node(index, urlunsplit(parts._replace(netloc=netloc)), proxy)

    def command(self, node: Node) -> list[str]:
        return [
            sys.executable,
            "-m",
            "coordinator",
            "--backend",
            self.kind,
            "--url",
            node.url,
            "--key-prefix",
            self.store.prefix,
            "--name",
            NAME,
            "--node-id",
            f"node{node.index}",
            "--ttl",
            str(self.ttl),
            "--grace",
            str(self.grace),
            "--",
            sys.executable,
            PROBE,
            str(self.flock),
            str(self.log),
            "--grandchild",
            "--wait-lock",
            f"--ignore-term-if={self.ignore_term}",
            f"--slow-stop-if={self.slow_stop}",
        ]

    def start(self, node: Node) -> None:
        out = open(self.tmp / f"node{node.index}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            # A session of its own, as under a service manager: in the runner's process
            # group, a paused supervisor would get SIGHUP and SIGCONT from the kernel
            # whenever another member (a server process) exits, since that group is
            # orphaned (POSIX job control), and the SIGHUP would go on to the child.
            node.process = subprocess.Popen(
                self.command(node),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        finally:
            out.close()

    def environment(self) -> dict[str, str]:
        """The supervisors' environment (benches may add to it)."""
        return cli_env()

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def events(self) -> list[Record]:
        return read_records(self.log)

    def probe_pids(self) -> set[int]:
        """Every probe and grandchild that ever started."""
        return {e.pid for e in self.events() if e.event in ("start", "violation", "grandchild")}

    def ours(self, pid: int) -> bool:
        """A live probe or grandchild of this bench. Pids are reused (pid_max may be
        32768), so a pid from the records alone proves nothing, and a supervisor's
        command line names the probe too: the probe must be the program itself."""
        argv = cmdline(pid).split(" ")
        return alive(pid) and argv[1:3] == [PROBE, str(self.flock)]

    def running(self) -> tuple[Node, Record] | None:
        """The node whose child started last, if that child is still alive."""
        starts = [e for e in self.events() if e.event == "start"]
        if not starts or not self.ours(starts[-1].pid):
            return None
        for node in self.nodes:
            if node.process is not None and node.process.pid == starts[-1].ppid:
                return node, starts[-1]
        return None

    def wait_running(self, timeout: float) -> tuple[Node, Record]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.running()
            if found:
                return found
            time.sleep(0.02)
        raise TimeoutError(f"no child running within {timeout:.0f}s")

    def wait_new_child(self, known: set[int], timeout: float) -> Record | None:
        """The first record of a probe not in `known`: its violation or its start."""
        end = time.monotonic() + timeout
        while True:
            fresh = [
                e for e in self.events() if e.event in ("violation", "start") and e.pid not in known
            ]
            if fresh:
                return fresh[0]
            if time.monotonic() >= end:
                return None
            time.sleep(0.01)

    def wait_start(self, pid: int, timeout: float) -> Record | None:
        end = time.monotonic() + timeout
        while True:
            for e in self.events():
                if e.event == "start" and e.pid == pid:
                    return e
            if time.monotonic() >= end:
                return None
            time.sleep(0.01)

    def takeover_bound(self) -> float:
        """The longest a takeover may take after a fault, with room for a slow machine:
        expiry (2 x ttl for Consul sessions), lock-delay or safety delay, then start."""
        return 4 * self.ttl + 15

    def server_pids(self) -> list[int]:
        assert self.server is not None and self.server.process is not None
        root = self.server.process.pid
        return [root, *children(root)]

    def restart_dead(self) -> list[str]:
        """Start nodes that are gone; report those that left without being told to."""
        problems = []
        for node in self.nodes:
            if node.process is not None and node.process.poll() is not None:
                if not node.expected_exit:
                    problems.append(
                        f"node{node.index} exited by itself with code {node.process.returncode}"
                    )
                node.expected_exit = False
                self.start(node)
        return problems

    def node_log_tail(self, lines: int = 15) -> Iterator[str]:
        for node in self.nodes:
            path = self.tmp / f"node{node.index}.log"
            if path.exists():
                yield f"--- node{node.index} ---"
                yield from path.read_text(errors="replace").splitlines()[-lines:]

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
            if node.proxy is not None:
                node.proxy.close()
        signal_all([pid for pid in self.probe_pids() if self.ours(pid)], signal.SIGKILL)
