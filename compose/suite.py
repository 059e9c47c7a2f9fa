"""The compose suite: compose/docker-compose.yml with compose/local.yml, run by podman.

Run by scripts/compose-test once the images are built. It checks the demo as the compose
file's comments describe it (one node per backend prints ticks, two stand by, stopping the
holder's container hands over, `coordinator status` answers inside a node), then applies
faults to three more nodes per backend whose child is the flock probe (tests/probe.py) on
a directory every node mounts: the holder's container cut off from the network and healed,
the server's container paused past the ttl, the server restarted. After each fault: no two
probes ever ran at once (the flock checker of the fault suite), the old child stopped
before the next started, fencing tokens increased, every node still runs and is healthy,
one child runs. Prints each takeover time and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import ROOT, Record, read_records
from tests.faults.check import history_problems, overlap

PROJECT = "coordinator-compose"
NETWORK = f"{PROJECT}_default"
TTL = {"redis": 5.0, "postgres": 5.0, "consul": 10.0}
NODES = (1, 2, 3)
FAULTS = ("partition", "server-pause", "server-restart")


STARTED = time.monotonic()


def say(line: str) -> None:
    """One line of the report, with the seconds since the suite started."""
    print(f"suite [{time.monotonic() - STARTED:4.0f}s] {line}", flush=True)


def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
    return result


def compose_file() -> dict[str, Any]:
    path = Path(ROOT) / "compose" / "docker-compose.yml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"


def wait_for(what: str, test: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = test()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


class Compose:
    def __init__(self, shared: Path, backends: list[str]) -> None:
        self.shared = shared
        self.files = ["compose/docker-compose.yml", "compose/local.yml", self.probe_file(backends)]

    def down(self) -> None:
        """What `down -v` does (no named volumes here), in two podman calls instead of
        two per container: podman removes the containers at once."""
        label = f"label=io.podman.compose.project={PROJECT}"
        for attempt in range(3):  # podman 4.3 may fail on one that stopped meanwhile
            ids = run("podman", "ps", "-aq", "--filter", label).stdout.split()
            if not ids:
                break
            run("podman", "rm", "-f", "-t", "1", *ids, check=attempt == 2)
        if run("podman", "network", "exists", NETWORK, check=False).returncode == 0:
            run("podman", "network", "rm", NETWORK)

    def __call__(self, *args: str, timeout: float = 600) -> str:
        files = [arg for path in self.files for arg in ("-f", path)]
        return run("podman-compose", "-p", PROJECT, *files, *args, timeout=timeout).stdout

    def stream(self, *args: str, timeout: float = 3600) -> int:
        """Runs with the output on this terminal; returns the exit code."""
        files = [arg for path in self.files for arg in ("-f", path)]
        command = ["podman-compose", "-p", PROJECT, *files, *args]
        return subprocess.run(command, timeout=timeout, check=False).returncode

    def probe_file(self, backends: list[str]) -> str:
        """Three more nodes per backend like the demo's, whose child is the probe."""
        demo = compose_file()
        services = {}
        for backend in backends:
            node = demo["services"][f"{backend}-node1"]
            for i in NODES:
                name = f"{backend}-probe{i}"
                probe = ["/src/tests/probe.py", f"/shared/{backend}.lock", f"/shared/{name}.log"]
                run_probe = ["coordinator", "--name", "probe", "--metrics-address", ":9100"]
                run_probe += ["--", "python", *probe, "--wait-lock"]
                services[name] = {
                    "image": "localhost/coordinator-node:dev",
                    "hostname": name,
                    "init": True,
                    "stop_grace_period": node["stop_grace_period"],
                    "healthcheck": node["healthcheck"],
                    "environment": node["environment"],
                    "volumes": [f"{self.shared}:/shared"],
                    "command": run_probe,
                }
        path = self.shared / "probes.yml"
        path.write_text(yaml.safe_dump({"services": services}))
        return str(path)


def healthy(service: str) -> bool:
    return run("podman", "healthcheck", "run", container(service), check=False).returncode == 0


def wait_healthy(services: list[str]) -> None:
    """podman before 4.6 does not wait for service_healthy: the suite does."""
    for service in services:
        wait_for(f"{service} healthy", lambda: healthy(service), 90, every=1)  # noqa: B023


def running(service: str) -> bool:
    result = run("podman", "inspect", "-f", "{{.State.Status}}", container(service), check=False)
    return result.stdout.strip() == "running"


def ticks(service: str) -> int:
    out = run("podman", "logs", container(service), check=False)
    return sum(1 for line in out.stdout.splitlines() if " tick " in line)


# --- the demo -------------------------------------------------------------------------


def demo(backend: str) -> float:
    """One node ticks, two stand by, status answers, stopping the holder hands over."""
    nodes = [f"{backend}-node{i}" for i in NODES]

    def ticking() -> list[str]:
        before = {n: ticks(n) for n in nodes}
        time.sleep(2.5)  # the demo child ticks every 2 s
        return [n for n in nodes if ticks(n) > before[n]]

    holders = wait_for(f"{backend}: a node ticking", ticking, 60, every=0)
    if len(holders) != 1:
        raise AssertionError(f"{backend}: {len(holders)} nodes tick at once: {holders}")
    [holder] = holders
    standby = next(n for n in nodes if n != holder)
    # Exit 69 is "cannot tell": a loaded host may answer late, and a node's lookup of the
    # server's name waits on podman's DNS, which stalls while containers come and go
    # (glibc then tries each nameserver in turn, 5 s each).
    for attempt in range(6):
        status = run(
            "podman", "exec", container(standby), "coordinator", "status", "--backend",
            backend, "--name", "demo", "--timeout", "15", check=False,
        )  # fmt: skip
        if status.returncode != 69:
            break
        say(f"{backend}: status in {standby} could not tell (attempt {attempt + 1}): "
            f"{status.stderr.strip()}")  # fmt: skip
    if status.returncode != 0 or holder not in status.stdout:
        raise AssertionError(f"{backend}: status in {standby} did not name {holder}: {status}")
    counts = {n: ticks(n) for n in nodes if n != holder}
    started = time.monotonic()
    run("podman", "stop", "-t", "15", container(holder))
    stopped = time.monotonic() - started
    new = wait_for(
        f"{backend}: a tick after {holder} stopped",
        lambda: [n for n in counts if ticks(n) > counts[n]],
        3 * TTL[backend] + 30,
    )
    takeover = time.monotonic() - started
    if len(new) != 1:
        raise AssertionError(f"{backend}: {new} all took over")
    run("podman", "start", container(holder))
    say(
        f"{backend:8} demo: {holder} ticks, {status.stdout.strip().splitlines()[0]!r} from "
        f"{standby}; {holder} stopped in {stopped:.2f} s, {new[0]} ticks "
        f"{takeover:.2f} s after the stop began"
    )
    return takeover


# --- faults on the probe nodes ----------------------------------------------------------


@dataclass
class Outcome:
    backend: str
    fault: str
    takeover: float | None = None  # from the fault (partition, restart) or the heal (pause)
    problems: list[str] | None = None


class Probes:
    def __init__(self, backend: str, shared: Path) -> None:
        self.backend = backend
        self.shared = shared
        self.nodes = [f"{backend}-probe{i}" for i in NODES]
        self.pids: dict[str, int] = {}  # each node's first process, on the host

    def records(self) -> list[Record]:
        """Every node's log, each pid made unique (each container has its own pids)."""
        merged = []
        for i, node in enumerate(self.nodes, 1):
            for r in read_records(self.shared / f"{node}.log"):
                merged.append(replace(r, pid=r.pid + i * 10**7, ppid=r.ppid + i * 10**7))
        return sorted(merged, key=lambda r: r.at)

    def holder(self) -> str | None:
        """The node whose probe runs now, if exactly one does."""
        runs = [n for n in self.nodes if self.running_in(n)]
        return runs[0] if len(runs) == 1 else None

    def running_in(self, node: str) -> bool:
        """Whether the node's last probe still lives (a probe killed with SIGKILL, as a
        PostgreSQL holder's child is on a lost lock, leaves no stop record)."""
        starts = [r for r in read_records(self.shared / f"{node}.log") if r.event == "start"]
        if not starts:
            return False
        # Its pid is one of the node's own pid namespace: looked up in the container's
        # /proc, seen from the host through its first process (cheaper than an exec).
        if node not in self.pids:
            pid = run("podman", "inspect", "-f", "{{.State.Pid}}", container(node)).stdout
            self.pids[node] = int(pid)
        cmdline = Path(f"/proc/{self.pids[node]}/root/proc/{starts[-1].pid}/cmdline")
        try:
            return b"probe.py" in cmdline.read_bytes()
        except OSError:
            return False

    def starts_after(self, at: float) -> list[Record]:
        return [r for r in self.records() if r.event == "start" and r.at > at]

    def problems(self) -> list[str]:
        records = self.records()
        found = history_problems(records)
        found += [
            f"pid {r.pid} ran {overlap(records, r.pid):.2f} s beside another child"
            for r in records
            if r.event == "violation"
        ]
        found += [f"{n} is not running" for n in self.nodes if not running(n)]
        return found

    def settled(self, timeout: float) -> str:
        """Nothing lost: every node runs and answers /healthz, exactly one child runs."""
        wait_for(
            f"{self.backend}: every probe node healthy", lambda: all(map(healthy, self.nodes)),
            timeout, every=1,
        )  # fmt: skip
        holder: str = wait_for(f"{self.backend}: one child", self.holder, timeout)
        return holder

    def fault(self, fault: str) -> Outcome:
        ttl = TTL[self.backend]
        outcome = Outcome(self.backend, fault)
        holder = self.settled(4 * ttl + 30)
        server = container(self.backend)
        started = time.monotonic()
        healed = started
        new: list[Record] = []
        try:
            if fault == "partition":
                run("podman", "network", "disconnect", NETWORK, container(holder))
                new = wait_for(
                    f"{self.backend}: a child after {holder} was cut off",
                    lambda: self.starts_after(started), 4 * ttl + 30,
                )  # fmt: skip
                time.sleep(1)  # the cut-off node keeps trying for a while
                healed = time.monotonic()
                run("podman", "network", "connect", NETWORK, container(holder))
            elif fault == "server-pause":
                run("podman", "pause", server)
                time.sleep(ttl + 2)  # past the ttl: the holder must have stopped its child
                healed = time.monotonic()
                run("podman", "unpause", server)
            elif fault == "server-restart":
                run("podman", "restart", "-t", "10", server)
                healed = time.monotonic()
            else:
                raise ValueError(fault)
            if not new:
                new = wait_for(
                    f"{self.backend}: a child after {fault}",
                    lambda: self.starts_after(started), 6 * ttl + 60,
                )  # fmt: skip
            outcome.takeover = new[0].at - (started if fault == "partition" else healed)
            self.settled(4 * ttl + 30)
        except (TimeoutError, RuntimeError) as exc:
            outcome.problems = [str(exc)]
        finally:  # heal whatever the outcome
            run("podman", "network", "connect", NETWORK, container(holder), check=False)
            run("podman", "unpause", server, check=False)
        outcome.problems = (outcome.problems or []) + self.problems()
        if outcome.problems:
            for node in self.nodes:
                out = run("podman", "logs", "--tail", "15", container(node), check=False)
                print(f"--- {node}\n{out.stdout}{out.stderr}", end="", flush=True)
        took = f"{outcome.takeover:.2f} s" if outcome.takeover is not None else "none"
        say(
            f"{self.backend:8} {fault:15} holder {holder}: takeover {took}, "
            f"problems: {outcome.problems or 'none'}"
        )
        return outcome


# --- the run ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="what CI runs")
    parser.add_argument("--keep", action="store_true", help="leave the containers up")
    parser.add_argument("--backends", default="redis,postgres,consul")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--no-test-profile", action="store_true")
    args = parser.parse_args()
    backends = args.backends.split(",")
    faults = args.faults.split(",")
    fault_backends = ["redis", "postgres"] if args.quick else backends
    fault_backends = [b for b in fault_backends if b in backends]
    if args.quick:
        faults = [f for f in faults if f in ("partition", "server-pause")]

    shared = Path(tempfile.mkdtemp(prefix="coordinator-compose-"))
    compose = Compose(shared, fault_backends)
    compose.down()
    ok = True
    try:
        started = time.monotonic()
        compose("up", "-d", *backends)
        wait_healthy(backends)

        def nodes_of(backend: str) -> list[str]:
            nodes = [f"{backend}-node{i}" for i in NODES]
            nodes += [f"{backend}-probe{i}" for i in NODES if backend in fault_backends]
            return nodes

        # podman-compose creates and starts containers one by one: a backend each, at once.
        with ThreadPoolExecutor(len(backends)) as pool:
            list(pool.map(lambda b: compose("up", "-d", "--no-deps", *nodes_of(b)), backends))
        say(f"up in {time.monotonic() - started:.1f} s")

        # The backends at once: each has its own server and nodes.
        with ThreadPoolExecutor(len(backends)) as pool:
            list(pool.map(demo, backends))

        def faults_on(backend: str) -> list[Outcome]:
            return [Probes(backend, shared).fault(fault) for fault in faults]

        with ThreadPoolExecutor(max(1, len(fault_backends))) as pool:
            outcomes = [o for batch in pool.map(faults_on, fault_backends) for o in batch]
        ok = not any(o.problems for o in outcomes)
        if not args.no_test_profile:
            # The suite in the `tests` container, against the compose servers, alone (a
            # status test failed once when it ran beside the demo and the partitions).
            pytest = [*compose_file()["services"]["tests"]["command"], "-p", "no:cacheprovider"]
            if args.quick:
                pytest += ["tests/test_status.py"]
            say("the test profile: " + " ".join(pytest))
            servers = [s for s in TTL if s not in backends]
            if servers:  # the suite uses all three
                compose("up", "-d", *servers)
            wait_healthy(list(TTL))
            run_tests = ["--profile", "test", "run", "--rm", "-T", "--no-deps", "tests"]
            code = compose.stream(*run_tests, *pytest)
            say(f"the test profile exited {code}")
            ok = ok and code == 0
    finally:
        if not args.keep:
            compose.down()
    if ok and not args.keep:
        shutil.rmtree(shared)  # kept on a failure: the probes' logs
    say("compose suite: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
