"""`benchmarks/run`: handoff, failover, cost and scale of coordinator on each backend,
and single-beat on the same Redis at the same ttl. See docs/benchmarks.md."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from benchmarks import backends, machine, report, singlebeat
from benchmarks.measure import tree_cpu_seconds
from benchmarks.procs import Cluster, ConsulLock, Coordinator, Kind, SingleBeat
from benchmarks.proxy import ProxyHub
from benchmarks.results import GRACE, Results
from benchmarks.scenarios import (
    Idle,
    Timings,
    child_start,
    failovers,
    form,
    handoffs,
    idle,
    log,
    scale,
    start_to_exec,
    start_to_exit,
    warm,
)
from benchmarks.tables import comparison, table
from tests.servers import consul_binary

ALL = ("redis", "postgres", "consul", "file")
SCENARIOS = ("start", "idle", "handoff", "failover", "scale")
NAME = "bench"


@dataclass
class Plan:
    quick: bool
    backends: list[str]
    rounds: int
    failover_rounds: int
    standbys: list[int]
    ttl: float
    single_beat: bool
    markdown: Path | None
    keep: bool
    only: tuple[str, ...] = SCENARIOS
    consul_lock: bool = True
    venv: bool = True
    check: bool = False

    @property
    def exit_rounds(self) -> int:
        return 10 if self.quick else 20

    def ttl_for(self, kind: str) -> float:
        return max(2.0, self.ttl) if kind == "consul" else self.ttl

    def failovers_for(self, kind: str) -> int:
        return self.failover_rounds

    def idle_window(self, kind: str) -> float:
        ttl = self.ttl_for(kind)
        return max(10.0, ttl) if self.quick else max(20.0, 2 * ttl)

    def standbys_for(self, kind: str) -> list[int]:
        """Scale runs on Redis and PostgreSQL; Consul gets the first count only, and the
        file backend (one host, no server) none."""
        if kind == "file":
            return []
        return self.standbys[:1] if kind == "consul" else self.standbys

    @property
    def scale_rounds(self) -> int:
        return 2 if self.quick else 5

    @property
    def single_beat_rounds(self) -> int:
        return 2 if self.quick else 4


def parse(argv: list[str]) -> Plan:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Benchmark coordinator on real servers, side by side with single-beat.",
    )
    parser.add_argument("--quick", action="store_true", help="few rounds, 10 standbys")
    parser.add_argument("--backends", default=",".join(ALL), help="comma-separated (%(default)s)")
    parser.add_argument("--rounds", type=int, help="handoff and start rounds (20; quick: 5)")
    parser.add_argument(
        "--failover-rounds", type=int, help="kill -9 rounds (8; quick: 2; consul: a third)"
    )
    parser.add_argument(
        "--standbys",
        help="standby counts for the scale test on redis and postgres; consul takes the "
        "first (100,500; quick: 10)",
    )
    parser.add_argument(
        "--only", help=f"comma-separated scenarios to run (all: {','.join(SCENARIOS)})"
    )
    parser.add_argument("--ttl", type=float, default=5.0, help="lease ttl (consul: at least 2)")
    parser.add_argument("--no-single-beat", action="store_true", help="skip the comparison")
    parser.add_argument(
        "--no-consul-lock", action="store_true", help="skip `consul lock` on the same agent"
    )
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a run is wrong (a supervisor or server that did not run, a failed "
        "scenario, two children at once, an orphan); missed targets do not count",
    )
    parser.add_argument(
        "--no-venv",
        action="store_true",
        help="run coordinator with this interpreter, not one whose site-packages hold only "
        "its dependencies",
    )
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ALL]
    if unknown:
        parser.error(f"unknown backend {', '.join(unknown)} (choose from {', '.join(ALL)})")
    only = tuple(k.strip() for k in (args.only or ",".join(SCENARIOS)).split(",") if k.strip())
    if unknown := [k for k in only if k not in SCENARIOS]:
        parser.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    quick = bool(args.quick)
    standbys = args.standbys or ("10" if quick else "100,500")
    return Plan(
        quick=quick,
        backends=kinds,
        rounds=args.rounds or (5 if quick else 20),
        failover_rounds=args.failover_rounds or (2 if quick else 8),
        standbys=[int(n) for n in standbys.split(",") if n.strip()],
        ttl=args.ttl,
        single_beat=not args.no_single_beat,
        consul_lock=not args.no_consul_lock,
        markdown=args.markdown,
        keep=args.keep,
        only=only,
        venv=not args.no_venv,
        check=bool(args.check),
    )


def measure(
    kind: Kind, label: str, server: backends.Server, plan: Plan, work: Path, hub: ProxyHub
) -> Results:
    """Every scenario for one supervisor kind on one server."""
    ttl = server.ttl
    res = Results(server.kind, label, ttl)
    # Another tool (single-beat, consul lock): fewer rounds, a name per phase.
    is_sb = not isinstance(kind, Coordinator)
    if server.pid and not is_sb and "scale" in plan.only:
        before, started = tree_cpu_seconds(server.pid), time.monotonic()
        time.sleep(3.0 if plan.quick else 10.0)
        res.server_alone_cpu = (tree_cpu_seconds(server.pid) - before) / (
            time.monotonic() - started
        )

    # single-beat never releases its lock: give each phase a name of its own, so none
    # waits for the previous phase's lock to expire (consul lock's names differ anyway).
    def name(phase: str) -> str:
        return f"{NAME}-{phase}" if is_sb else NAME

    warm(kind, name("warm"), work, 3 * ttl + 10)

    if "start" in plan.only:
        log(f"{label} on {server.kind}: start to child exec")
        res.child_start = child_start(work, 5)
        names = (lambda i: name(f"start-{i}")) if is_sb else (lambda i: NAME)
        res.start = start_to_exec(kind, names, work, min(plan.rounds, 10), 3 * ttl + 10)
    if "idle" in plan.only:
        log(f"{label} on {server.kind}: idle holder and standbys")
        res.idle = measure_idle(kind, server, plan, work, hub, name("idle"))
    if "handoff" in plan.only or "failover" in plan.only:
        measure_takeovers(kind, label, server, plan, work, res, name("ha"))
    counts = plan.standbys_for(server.kind) if "scale" in plan.only else []
    if is_sb:  # one count, and none in quick mode: its handoffs take a ttl each
        counts = [] if plan.quick else counts[:1]
    for n in counts:
        log(f"{label} on {server.kind}: scale, {n} standbys")
        rounds = max(1, plan.scale_rounds // 2) if is_sb else plan.scale_rounds
        window = max(10.0, ttl) if plan.quick else max(15.0, 2 * ttl)
        res.scale.append(scale(kind, name("scale"), work, n, rounds, window, ttl, server.pid))
    return res


def measure_idle(
    kind: Kind, server: backends.Server, plan: Plan, work: Path, hub: ProxyHub, name: str
) -> Idle:
    """The holder and the standbys each behind their own counting proxy."""
    proxies = None
    holder_kind, standby_kind = kind, kind
    if server.port is not None:
        proxies = (hub.add(server.port, server.kind), hub.add(server.port, server.kind))
        holder_kind, standby_kind = (
            with_url(kind, backends.with_port(server.url, p.port)) for p in proxies
        )
    window = plan.idle_window(server.kind)
    return idle(holder_kind, standby_kind, name, work, 2, window, server.ttl, proxies)


def measure_takeovers(
    kind: Kind,
    label: str,
    server: backends.Server,
    plan: Plan,
    work: Path,
    res: Results,
    name: str,
) -> None:
    """Graceful handoffs, then crash failovers, in one cluster of three supervisors."""
    is_sb, ttl = not isinstance(kind, Coordinator), server.ttl
    cluster = Cluster(kind, name, work / "ha")
    try:
        form(cluster, 2, ttl)
        if "handoff" in plan.only:
            rounds = plan.single_beat_rounds if is_sb else plan.rounds
            log(f"{label} on {server.kind}: {rounds} graceful handoffs")
            res.handoff = handoffs(cluster, rounds, 3 * ttl + 10)
        if "failover" in plan.only:
            rounds = plan.single_beat_rounds if is_sb else plan.failovers_for(server.kind)
            log(f"{label} on {server.kind}: {rounds} crash failovers (kill -9)")
            res.failover = failovers(cluster, rounds, 3 * ttl + 20)
    except (TimeoutError, RuntimeError) as exc:
        res.handoff.error = res.handoff.error or str(exc)
    finally:
        cluster.stop_all()


def guarded(
    kind: Kind, label: str, server: backends.Server, plan: Plan, work: Path, hub: ProxyHub
) -> Results:
    """measure(), with an unexpected failure reported in the table, not raised."""
    try:
        return measure(kind, label, server, plan, work, hub)
    except Exception as exc:
        log(f"{label} on {server.kind} failed: {type(exc).__name__}: {exc}")
        res = Results(server.kind, label, server.ttl)
        res.skipped = f"failed: {type(exc).__name__}: {exc}"
        return res


def with_url(kind: Kind, url: str) -> Kind:
    if isinstance(kind, Coordinator):
        return replace(kind, url=url)
    if isinstance(kind, ConsulLock):
        return ConsulLock(kind.executable, url)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return SingleBeat(kind.executable, url, port, kind.ttl)


class Tables(list[report.Table]):
    """Tables in the order they are made; each is printed as soon as it is done."""

    def append(self, table: report.Table) -> None:
        super().append(table)
        print(table.text() + "\n", flush=True)


def exits(kinds: list[tuple[Kind, str]], plan: Plan, work: Path, ttl: float) -> list[Timings]:
    """Start to exit of supervisors running `true`, the kinds taking turns. single-beat
    never releases its lock, so each of its rounds takes a name of its own."""

    def names(kind: Kind, base: str) -> Callable[[int], str]:
        if isinstance(kind, Coordinator):
            return lambda i: base
        return lambda i: f"{base}-exit-{i}"

    if "start" not in plan.only:
        return [Timings() for _ in kinds]
    log("start to exit, running `true`: " + ", ".join(k.label for k, _ in kinds) + " in turn")
    pairs = [(kind, names(kind, base)) for kind, base in kinds]
    return start_to_exit(pairs, work, plan.exit_rounds, 3 * ttl + 10)


def interpreter(plan: Plan) -> tuple[str, str]:
    """The Python that runs coordinator, and how it was chosen."""
    if not plan.venv:
        return sys.executable, f"{sys.executable} (--no-venv)"
    try:
        log("preparing a virtualenv of coordinator's dependencies (cached)")
        python = singlebeat.coordinator_python()
    except (RuntimeError, OSError, TimeoutError) as exc:
        log(f"no virtualenv ({exc}): coordinator runs with {sys.executable}")
        return sys.executable, f"{sys.executable} (no virtualenv: {exc})"
    return python, f"{python} (a virtualenv of {', '.join(singlebeat.DEPENDENCIES)})"


def run(plan: Plan, work: Path, python: str) -> list[report.Table]:
    tables = Tables()
    missing = backends.supported()
    hub = ProxyHub()
    clients = max(plan.standbys, default=10) + 10
    sb_exe, sb_error = "", ""
    if plan.single_beat:
        try:
            log(f"installing single-beat {singlebeat.VERSION} (cached)")
            sb_exe = singlebeat.install()
        except (RuntimeError, OSError, TimeoutError) as exc:
            sb_error = str(exc)
    kinds = list(plan.backends)
    if plan.single_beat and "redis" not in kinds:
        kinds.insert(0, "redis")
    try:
        for kind in kinds:
            ttl = plan.ttl_for(kind)
            res = Results(kind, "coordinator", ttl)
            if missing[kind]:
                res.skipped = missing[kind]
                tables.append(table(res))
                continue
            try:
                log(f"starting {kind}")
                server = backends.start(kind, ttl, work / kind, clients)
            except (backends.Unavailable, OSError, RuntimeError) as exc:
                res.skipped = f"the {kind} server did not start: {exc}"
                tables.append(table(res))
                continue
            try:
                turns: list[tuple[Kind, str]] = []
                if kind in plan.backends:
                    coord = Coordinator(kind, server.url, ttl, GRACE, python=python)
                    res = guarded(coord, "coordinator", server, plan, work / kind, hub)
                    turns.append((coord, NAME))
                theirs = Results(kind, "single-beat", ttl)
                if kind == "redis" and plan.single_beat:
                    if sb_error:
                        theirs.skipped = sb_error
                    elif ttl != int(ttl):
                        theirs.skipped = "single-beat takes whole seconds only (--ttl)"
                    else:
                        sb = SingleBeat(sb_exe, server.url, server.port or 0, int(ttl))
                        theirs = guarded(sb, "single-beat", server, plan, work / "sb", hub)
                        turns.append((sb, NAME))
                timings = exits(turns, plan, work / kind, ttl)
                for (done_kind, _), timing in zip(turns, timings, strict=True):
                    (res if isinstance(done_kind, Coordinator) else theirs).exit = timing
                if kind in plan.backends:
                    done = table(res)
                    done.notes.insert(0, f"server: {server.version}")
                    tables.append(done)
                if kind == "redis" and plan.single_beat:
                    tables.append(table(theirs))
                    if kind in plan.backends:
                        tables.append(comparison(res, theirs))
                if kind == "consul" and plan.consul_lock:
                    for done in consul_lock(res, server, plan, work, hub):
                        tables.append(done)
            finally:
                log(f"stopping {kind}")
                backends.stop(server)
    finally:
        hub.close()
    return tables


def consul_lock(
    ours: Results, server: backends.Server, plan: Plan, work: Path, hub: ProxyHub
) -> list[report.Table]:
    """`consul lock` from the same binary, on the same agent, with its fixed timings."""
    binary = consul_binary()
    lock = ConsulLock(binary or "consul", server.url)
    theirs = Results("consul", lock.label, lock.ttl)
    if binary is None:
        theirs.skipped = "no consul binary"
    else:
        at_15 = replace(server, ttl=lock.ttl)
        theirs = guarded(lock, lock.label, at_15, plan, work / "consul-lock", hub)
    return [table(theirs), comparison(ours, theirs)]


def main(argv: list[str] | None = None) -> int:
    plan = parse(sys.argv[1:] if argv is None else argv)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    info = machine.describe()
    mode = "quick" if plan.quick else "full"
    if plan.only != SCENARIOS:
        mode += f", only {','.join(plan.only)}"
    print("\n".join(f"{k}: {v}" for k, v in info) + f"\nmode: {mode}\n", flush=True)
    python, how = interpreter(plan)
    info.append(("coordinator runs with", how))
    print(f"coordinator runs with: {how}\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="coordinator-bench-"))
    started = time.monotonic()
    try:
        tables = run(plan, work, python)
    except KeyboardInterrupt:
        log("interrupted: every server and supervisor started has been stopped")
        return 130
    finally:
        if plan.keep:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    misses = sum(len(t.misses()) for t in tables)
    print(f"{misses} target(s) missed" if misses else "every target met", end="")
    print(f"; {mode} run, {minutes:.1f} min")
    if plan.markdown:
        info.append(("run", f"{mode}, {minutes:.1f} min"))
        body = "\n".join(f"- {k}: {v}" for k, v in info)
        plan.markdown.write_text(body + "\n\n" + "\n".join(t.markdown() for t in tables))
    wrong = [problem for t in tables for problem in t.problems]
    if plan.check and wrong:
        print("\n".join(["--check: this run is wrong:", *wrong]), file=sys.stderr)
        return 1
    return 0
