"""`benchmarks/run`: handoff, failover, cost and scale of coordinator on each backend,
and single-beat on the same Redis at the same ttl. See docs/benchmarks.md."""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchmarks import backends, machine, report, singlebeat
from benchmarks.measure import TICK, percentile
from benchmarks.procs import Cluster, Coordinator, Kind, SingleBeat
from benchmarks.proxy import ProxyHub
from benchmarks.scenarios import (
    Idle,
    Scale,
    Timings,
    failovers,
    form,
    handoffs,
    idle,
    log,
    scale,
    start_to_exec,
    warm,
)

ALL = ("redis", "postgres", "consul", "file")
GRACE = 1.0
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

    def ttl_for(self, kind: str) -> float:
        return max(10.0, self.ttl) if kind == "consul" else self.ttl

    def failovers_for(self, kind: str) -> int:
        # Consul cannot fail over faster than 2 x ttl + lock-delay: fewer rounds.
        return max(1, self.failover_rounds // 3) if kind == "consul" else self.failover_rounds

    def idle_window(self, kind: str) -> float:
        ttl = self.ttl_for(kind)
        return max(10.0, ttl) if self.quick else max(30.0, 3 * ttl)

    @property
    def scale_rounds(self) -> int:
        return 2 if self.quick else 5

    @property
    def single_beat_rounds(self) -> int:
        return 2 if self.quick else 5


def parse(argv: list[str]) -> Plan:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run",
        description="Benchmark coordinator on real servers, side by side with single-beat.",
    )
    parser.add_argument("--quick", action="store_true", help="few rounds, 10 standbys")
    parser.add_argument("--backends", default=",".join(ALL), help="comma-separated (%(default)s)")
    parser.add_argument("--rounds", type=int, help="handoff and start rounds (20; quick: 5)")
    parser.add_argument("--failover-rounds", type=int, help="kill -9 rounds (9; quick: 2)")
    parser.add_argument("--standbys", help="standby counts for the scale test (100,400; quick: 10)")
    parser.add_argument("--ttl", type=float, default=5.0, help="lease ttl (consul: at least 10)")
    parser.add_argument("--no-single-beat", action="store_true", help="skip the comparison")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ALL]
    if unknown:
        parser.error(f"unknown backend {', '.join(unknown)} (choose from {', '.join(ALL)})")
    quick = bool(args.quick)
    standbys = args.standbys or ("10" if quick else "100,400")
    return Plan(
        quick=quick,
        backends=kinds,
        rounds=args.rounds or (5 if quick else 20),
        failover_rounds=args.failover_rounds or (2 if quick else 9),
        standbys=[int(n) for n in standbys.split(",") if n.strip()],
        ttl=args.ttl,
        single_beat=not args.no_single_beat,
        markdown=args.markdown,
        keep=args.keep,
    )


@dataclass
class Results:
    kind: str
    label: str
    ttl: float
    start: Timings = field(default_factory=Timings)
    idle: Idle = field(default_factory=Idle)
    handoff: Timings = field(default_factory=Timings)
    failover: Timings = field(default_factory=Timings)
    scale: list[Scale] = field(default_factory=list)
    skipped: str = ""


def p50(t: Timings) -> float:
    return percentile(t.samples, 50)


def p99(t: Timings) -> float:
    return percentile(t.samples, 99)


def measure(
    kind: Kind, label: str, server: backends.Server, plan: Plan, work: Path, hub: ProxyHub
) -> Results:
    """Every scenario for one supervisor kind on one server."""
    ttl = server.ttl
    res = Results(server.kind, label, ttl)
    is_sb = isinstance(kind, SingleBeat)
    rounds = plan.single_beat_rounds if is_sb else plan.rounds
    warm(kind, "warm" if is_sb else NAME, work, 3 * ttl + 10)

    log(f"{label} on {server.kind}: start to child exec")
    names = (lambda i: f"start-{i}") if is_sb else (lambda i: NAME)
    res.start = start_to_exec(kind, names, work, min(plan.rounds, 10), 3 * ttl + 10)

    log(f"{label} on {server.kind}: idle holder and standbys, {plan.idle_window(server.kind):g} s")
    proxies = None
    holder_kind, standby_kind = kind, kind
    if server.port is not None:
        proxies = (hub.add(server.port, server.kind), hub.add(server.port, server.kind))
        holder_kind, standby_kind = (
            with_url(kind, backends.with_port(server.url, p.port)) for p in proxies
        )
    res.idle = idle(
        holder_kind, standby_kind, NAME, work, 2, plan.idle_window(server.kind), ttl, proxies
    )

    log(f"{label} on {server.kind}: {rounds} graceful handoffs")
    cluster = Cluster(kind, NAME, work / "ha")
    try:
        form(cluster, 2, ttl)
        res.handoff = handoffs(cluster, rounds, 3 * ttl + 10)
        fo_rounds = plan.single_beat_rounds if is_sb else plan.failovers_for(server.kind)
        log(f"{label} on {server.kind}: {fo_rounds} crash failovers (kill -9)")
        res.failover = failovers(cluster, fo_rounds, 3 * ttl + 20)
    except (TimeoutError, RuntimeError) as exc:
        res.handoff.error = res.handoff.error or str(exc)
    finally:
        cluster.stop_all()

    if server.kind == "file":
        return res
    counts = plan.standbys[:1] if is_sb else plan.standbys
    for n in counts:
        log(f"{label} on {server.kind}: scale, {n} standbys")
        rounds = max(1, plan.scale_rounds // 2) if is_sb else plan.scale_rounds
        window = max(10.0, ttl) if plan.quick else max(15.0, 2 * ttl)
        res.scale.append(scale(kind, NAME, work, n, rounds, window, ttl, server.pid))
    return res


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
        return Coordinator(kind.backend, url, kind.ttl, kind.grace, kind.extra)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return SingleBeat(kind.executable, url, port, kind.ttl)


def failover_target(kind: str, ttl: float) -> tuple[str, float]:
    if kind == "redis":
        return f"p50 <= ttl + 0.3 s = {ttl + 0.3:g} s", ttl + 0.3
    if kind == "postgres":
        return "p50 < 2 s", 2.0
    if kind == "consul":
        # The session is invalidated up to 2 x ttl after its last renewal, then Consul
        # holds the key for the lock-delay (the safety delay, by default the ttl).
        return f"p50 < 2 x ttl + lock-delay = {3 * ttl:g} s", 3 * ttl
    return "", math.inf


WHY = {
    "rss": "the supervisor is a Python process: the interpreter, typer/click and the "
    "backend's client library stay resident (docs/benchmarks.md has the breakdown)",
    "standby": "a standby looks at the lock again whenever the lease it saw last runs "
    "out, and the holder renews every ttl/3, so it looks about 1.5 times per ttl",
    "holder": "each renewal takes more than one round trip on this backend",
    "start": "the interpreter and the CLI's imports take most of it",
    "handoff": "see docs/benchmarks.md",
    "scale": "all standbys wake at once on a release and the winner's child waits "
    "for CPU on this 2-core machine",
    "failover": "see docs/benchmarks.md",
}


def fmt_pair(a: float, b: float) -> str:
    if a < 2 and b < 2:
        return f"{a * 1000:.0f} / {b * 1000:.0f} ms"
    return f"{a:.2f} / {b:.2f} s"


def table(res: Results, plan: Plan) -> report.Table:
    ttl = res.ttl
    t = report.Table(f"{res.label} on {res.kind} (ttl {ttl:g} s, grace {GRACE:g} s)")
    if res.skipped:
        t.add("all", f"not run: {res.skipped}")
        return t
    h = res.handoff
    if h.samples:
        t.add(
            f"graceful handoff p50 / p99 (n={len(h.samples)})",
            fmt_pair(p50(h), p99(h)),
            "p50 < 100 ms",
            p50(h) < 0.1,
            WHY["handoff"],
        )
    if h.error:
        t.notes.append(f"handoff: {h.error}")
    f = res.failover
    target, bound = failover_target(res.kind, ttl)
    if f.samples:
        t.add(
            f"crash failover p50 / p99 (n={len(f.samples)}, kill -9)",
            fmt_pair(p50(f), p99(f)),
            target or "-",
            p50(f) < bound if target else None,
            WHY["failover"],
        )
    if f.error:
        t.notes.append(f"failover: {f.error}")
    i = res.idle
    if i.counted and not i.error:
        holder, standby = i.per_ttl(i.holder_ops, 1), i.per_ttl(i.standby_ops, i.standbys)
        t.add(
            "idle holder: backend requests per ttl",
            f"{holder:.2f} ({holder / ttl:.2f}/s)",
            "about 3 (<= 3.5)",
            holder <= 3.5,
            WHY["holder"],
        )
        t.add(
            "idle standby: backend requests per ttl",
            f"{standby:.2f} ({standby / ttl:.2f}/s)",
            "<= 1",
            standby <= 1.0,
            WHY["standby"],
        )
        t.notes.append(f"holder requests: {breakdown(i.holder_ops, i.window, 1)}")
        t.notes.append(f"standby requests: {breakdown(i.standby_ops, i.window, i.standbys)}")
    elif not i.error:
        t.add("idle backend requests", "n/a: local flock, no server (standbys poll every 50 ms)")
    if i.error:
        t.notes.append(f"idle: {i.error}")
    else:
        rss = max(i.holder_rss, i.standby_rss)
        t.add(
            "supervisor RSS holder / standby",
            f"{i.holder_rss:.1f} / {i.standby_rss:.1f} MiB",
            "<= 25 MiB",
            rss <= 25.0,
            WHY["rss"],
        )
        if i.holder_pss is not None and i.standby_pss is not None:
            t.notes.append(
                f"PSS (shared pages split among users) holder / standby: "
                f"{i.holder_pss:.1f} / {i.standby_pss:.1f} MiB"
            )
        t.add(
            "idle CPU holder / standby (of one core)",
            f"{cpu(i.holder_cpu, i.window)} / {cpu(i.standby_cpu, i.window)}",
        )
    s = res.start
    if s.samples:
        t.add(
            f"start to child exec p50 / p99 (n={len(s.samples)})",
            fmt_pair(p50(s), p99(s)),
            "p50 < 300 ms",
            p50(s) < 0.3,
            WHY["start"],
        )
    if s.error:
        t.notes.append(f"start: {s.error}")
    for sc in res.scale:
        n = sc.standbys
        hs = sc.handoffs
        prefix = f"{n} standbys"
        if hs.samples:
            t.add(
                f"{prefix}: handoff p50 / p99 (n={len(hs.samples)})",
                fmt_pair(p50(hs), p99(hs)),
                "p99 < 300 ms" if n >= 100 else "-",
                p99(hs) < 0.3 if n >= 100 else None,
                WHY["scale"],
            )
        if sc.backend_idle_cpu is not None:
            t.add(
                f"{prefix}: backend CPU idle / during handoffs",
                f"{report.pct(sc.backend_idle_cpu)} / {report.pct(sc.backend_handoff_cpu)}",
                "idle < 10% of a core",
                sc.backend_idle_cpu < 0.10,
            )
        t.add(
            f"{prefix}: all standbys' CPU together, idle",
            f"{cpu(sc.standbys_cpu, sc.window)} ({sc.supervisor_rss:.1f} MiB RSS each)",
        )
        if sc.stopped_early:
            t.notes.append(f"scale {sc.wanted}: {sc.stopped_early}")
        if sc.spawn_seconds:
            t.notes.append(f"scale {sc.wanted}: {n} standbys started in {sc.spawn_seconds:.0f} s")
    events = len(h.samples) + len(f.samples) + sum(len(sc.handoffs.samples) for sc in res.scale)
    overlaps = h.overlaps + f.overlaps + sum(sc.handoffs.overlaps for sc in res.scale)
    t.add("two children at once", f"{overlaps} in {events} takeovers", "0", overlaps == 0)
    t.add(
        "child left running after kill -9 of its supervisor",
        f"{f.orphans} of {len(f.samples)}",
        "0",
        f.orphans == 0 if f.samples else None,
    )
    if res.label != "coordinator":  # the targets are coordinator's
        for row in t.rows:
            row.target, row.ok = "", None
    return t


def cpu(fraction: float, window: float) -> str:
    """CPU as a share of one core; /proc counts whole clock ticks."""
    if fraction <= 0 and window > 0:
        return f"< {100 / TICK / window:.2f}%"
    return report.pct(fraction)


def breakdown(ops: dict[str, int], window: float, members: int) -> str:
    if not ops:
        return "none"
    items = sorted(ops.items(), key=lambda kv: -kv[1])
    return "; ".join(f"{name} {n / members / window * 60:.1f}/min" for name, n in items[:6])


def comparison(ours: Results, theirs: Results) -> report.Comparison:
    c = report.Comparison(
        f"coordinator vs single-beat {singlebeat.VERSION} on the same Redis (ttl {ours.ttl:g} s)"
    )
    if theirs.skipped:
        c.compare("all", "-", f"not run: {theirs.skipped}", "-")
        return c
    c.compare(
        "graceful handoff p50",
        report.duration(p50(ours.handoff)),
        report.duration(p50(theirs.handoff)),
        report.ratio(p50(theirs.handoff), p50(ours.handoff)),
        ">= 25x faster",
        p50(theirs.handoff) >= 25 * p50(ours.handoff),
    )
    c.compare(
        "crash failover p50",
        report.duration(p50(ours.failover)),
        report.duration(p50(theirs.failover)),
        report.ratio(p50(theirs.failover), p50(ours.failover)),
    )
    oi, ti = ours.idle, theirs.idle
    if oi.counted and ti.counted and not oi.error and not ti.error:
        for who, a, b in (
            ("idle holder requests/s", oi.per_ttl(oi.holder_ops, 1), ti.per_ttl(ti.holder_ops, 1)),
            (
                "idle standby requests/s",
                oi.per_ttl(oi.standby_ops, oi.standbys),
                ti.per_ttl(ti.standby_ops, ti.standbys),
            ),
        ):
            c.compare(who, f"{a / ours.ttl:.2f}", f"{b / theirs.ttl:.2f}", report.ratio(b, a))
        c.compare(
            "supervisor RSS (holder)",
            f"{oi.holder_rss:.1f} MiB",
            f"{ti.holder_rss:.1f} MiB",
            report.ratio(ti.holder_rss, oi.holder_rss),
        )
        c.compare(
            "idle CPU holder",
            report.pct(oi.holder_cpu),
            report.pct(ti.holder_cpu),
            report.ratio(ti.holder_cpu, oi.holder_cpu),
        )
        c.compare(
            "idle CPU standby",
            report.pct(oi.standby_cpu),
            report.pct(ti.standby_cpu),
            report.ratio(ti.standby_cpu, oi.standby_cpu),
        )
    c.compare(
        "start to child exec p50",
        report.duration(p50(ours.start)),
        report.duration(p50(theirs.start)),
        report.ratio(p50(theirs.start), p50(ours.start)),
    )
    for mine, other in zip(ours.scale, theirs.scale, strict=False):
        if mine.backend_idle_cpu is not None and other.backend_idle_cpu is not None:
            c.compare(
                f"Redis CPU, {other.standbys} standbys idle",
                report.pct(mine.backend_idle_cpu) + f" ({mine.standbys})",
                report.pct(other.backend_idle_cpu),
                report.ratio(other.backend_idle_cpu, mine.backend_idle_cpu),
            )
        if mine.handoffs.samples and other.handoffs.samples:
            c.compare(
                f"handoff p50, {other.standbys} standbys",
                report.duration(p50(mine.handoffs)) + f" ({mine.standbys})",
                report.duration(p50(other.handoffs)),
                report.ratio(p50(other.handoffs), p50(mine.handoffs)),
            )
    c.compare(
        "child left running after kill -9",
        f"{ours.failover.orphans} of {len(ours.failover.samples)}",
        f"{theirs.failover.orphans} of {len(theirs.failover.samples)}",
        "-",
    )
    c.compare(
        "two children at once",
        str(ours.handoff.overlaps + ours.failover.overlaps),
        str(theirs.handoff.overlaps + theirs.failover.overlaps),
        "-",
    )
    return c


def run(plan: Plan, work: Path) -> list[report.Table]:
    tables: list[report.Table] = []
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
                tables.append(table(res, plan))
                continue
            try:
                log(f"starting {kind}")
                server = backends.start(kind, ttl, work / kind, clients)
            except (backends.Unavailable, OSError, RuntimeError) as exc:
                res.skipped = f"the {kind} server did not start: {exc}"
                tables.append(table(res, plan))
                continue
            try:
                if kind in plan.backends:
                    coord = Coordinator(kind, server.url, ttl, GRACE)
                    res = guarded(coord, "coordinator", server, plan, work / kind, hub)
                    tables.append(table(res, plan))
                    tables[-1].notes.insert(0, f"server: {server.version}")
                if kind == "redis" and plan.single_beat:
                    theirs = Results(kind, "single-beat", ttl)
                    if sb_error:
                        theirs.skipped = sb_error
                    elif ttl != int(ttl):
                        theirs.skipped = "single-beat takes whole seconds only (--ttl)"
                    else:
                        sb = SingleBeat(sb_exe, server.url, server.port or 0, int(ttl))
                        theirs = guarded(sb, "single-beat", server, plan, work / "sb", hub)
                    tables.append(table(theirs, plan))
                    if kind in plan.backends:
                        tables.append(comparison(res, theirs))
            finally:
                log(f"stopping {kind}")
                backends.stop(server)
    finally:
        hub.close()
    return tables


def main(argv: list[str] | None = None) -> int:
    plan = parse(sys.argv[1:] if argv is None else argv)

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    work = Path(tempfile.mkdtemp(prefix="coordinator-bench-"))
    started = time.monotonic()
    try:
        tables = run(plan, work)
    except KeyboardInterrupt:
        log("interrupted: every server and supervisor started has been stopped")
        return 130
    finally:
        if plan.keep:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    mode = "quick" if plan.quick else "full"
    info = [*machine.describe(), ("mode", f"{mode}, {minutes:.1f} min")]
    head = "\n".join(f"{k}: {v}" for k, v in info)
    print(head + "\n")
    print("\n\n".join(t.text() for t in tables))
    misses = sum(len(t.misses()) for t in tables)
    print(f"\n{misses} target(s) missed" if misses else "\nevery target met")
    if plan.markdown:
        body = "\n".join(f"- {k}: {v}" for k, v in info)
        plan.markdown.write_text(body + "\n\n" + "\n".join(t.markdown() for t in tables))
    return 0
