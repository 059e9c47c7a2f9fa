"""The tables: one per backend with a target and PASS/MISS per row, and the comparison
with single-beat; why a target is missed, where the cause is known."""

from __future__ import annotations

import math

from benchmarks import report, singlebeat
from benchmarks.measure import TICK, percentile
from benchmarks.results import GRACE, Results, p50, p99, problems
from benchmarks.scenarios import Timings


def failover_target(kind: str, ttl: float) -> tuple[str, float]:
    if kind == "redis":
        return f"p50 <= ttl + 0.3 s = {ttl + 0.3:g} s", ttl + 0.3
    if kind == "postgres":
        return "p50 < 2 s", 2.0
    if kind == "consul":
        # The holder's check turns critical a ttl after its last pass, then Consul holds
        # the key for the lock-delay (call timeout + grace + margin).
        return f"p50 <= ttl + grace + 1 s = {ttl + GRACE + 1:g} s", ttl + GRACE + 1
    return "", math.inf


# Why a target is missed, where the cause is known from the code path and shows in the
# request breakdown printed under the table. Keyed by metric, then backend ("" = any).
WHY: dict[str, dict[str, str]] = {
    "rss": {
        "": "a Python process: the interpreter and the backend's client library stay "
        "resident (redis-py alone, with the asyncio and ssl it imports, is about 21 MiB); "
        "docs/benchmarks.md has the breakdown",
    },
    "holder": {
        "postgres": "each renewal is 2 round trips, one per session: the pg_locks check on "
        "the lock session and a keepalive on the beacon session",
        "consul": "one check pass per renewal, plus the session renewal (every 10 ttl) and "
        "the watch's blocking query (every 5 min)",
    },
    "standby": {
        "redis": "a standby looks again whenever the lease it saw last would run out",
        "postgres": "one blocking pg_advisory_lock per ttl, but 5 round trips around it: "
        "BEGIN, set_config of the timeouts, the lock, ROLLBACK, then pg_try_advisory_lock",
        "consul": "a blocking query and a check pass every 3 ttls (further back in the line: "
        "a look and a query every 6, a pass every 3.5), a session renewal every 15",
    },
    "start": {"": "the interpreter and the client library's imports take most of it"},
    "handoff": {"": "see docs/benchmarks.md"},
    "failover": {"": "see docs/benchmarks.md"},
    "scale": {
        "redis": "a release wakes every standby at once (pub/sub) and each runs its acquire "
        "script: the new child waits for CPU among them on this 2-core machine",
        "consul": "a release wakes the 3 heads of the line of standbys, each sends one "
        "transaction with its ready session: what is left is the new child's start on a "
        "loaded 2-core machine",
        "postgres": "the server is busy with deadlock checks (see backend CPU), so some "
        "standbys' calls run past their timeout and are retried",
    },
    "backend_cpu": {
        "postgres": "every session queued on the advisory lock runs PostgreSQL's deadlock "
        "check after deadlock_timeout (1 s), and the check grows with the queue",
    },
}


def why(metric: str, kind: str) -> str:
    reasons = WHY.get(metric, {})
    return reasons.get(kind) or reasons.get("", "")


def fmt_pair(a: float, b: float) -> str:
    if a < 2 and b < 2:
        return f"{a * 1000:.0f} / {b * 1000:.0f} ms"
    return f"{a:.2f} / {b:.2f} s"


def idle_rows(t: report.Table, res: Results) -> None:
    """Requests, memory and CPU of the idle holder and standbys."""
    i, ttl = res.idle, res.ttl
    if i.counted and not i.error:
        holder, standby = i.per_ttl(i.holder_ops, 1), i.per_ttl(i.standby_ops, i.standbys)
        t.add(
            "idle holder: backend requests per ttl",
            f"{holder:.2f} ({holder / ttl:.2f}/s)",
            "about 3 (<= 3.5)",
            holder <= 3.5,
            why("holder", res.kind),
        )
        t.add(
            "idle standby: backend requests per ttl",
            f"{standby:.2f} ({standby / ttl:.2f}/s)",
            "<= 1",
            standby <= 1.0,
            why("standby", res.kind),
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
            why("rss", res.kind),
        )
        if i.holder_pss is not None and i.standby_pss is not None:
            t.add(
                "supervisor PSS holder / standby (shared pages split among their users)",
                f"{i.holder_pss:.1f} / {i.standby_pss:.1f} MiB",
            )
        if i.watchdog_rss is not None:
            pss = "-" if i.watchdog_pss is None else f"{i.watchdog_pss:.1f}"
            t.add("the holder's watchdog process RSS / PSS", f"{i.watchdog_rss:.1f} / {pss} MiB")
        t.add(
            "idle CPU holder / standby (of one core)",
            f"{cpu(i.holder_cpu, i.window)} / {cpu(i.standby_cpu, i.window)}",
        )


def timing_row(
    t: report.Table,
    kind: str,
    timings: Timings,
    metric: str,
    label: str,
    target: str,
    bound: float,
    detail: str = "",
) -> None:
    """The p50 / p99 row of `timings`, judged by p50 < bound when there is a target,
    and their error as a note."""
    if timings.samples:
        t.add(
            f"{label} p50 / p99 (n={len(timings.samples)}{detail})",
            fmt_pair(p50(timings), p99(timings)),
            target or "-",
            p50(timings) < bound if target else None,
            why(metric, kind),
        )
    if timings.error:
        t.notes.append(f"{metric}: {timings.error}")


def table(res: Results) -> report.Table:
    ttl = res.ttl
    t = report.Table(f"{res.label} on {res.kind} (ttl {ttl:g} s, grace {GRACE:g} s)")
    t.problems = problems(res)
    if res.skipped:
        t.add("all", f"not run: {res.skipped}")
        return t
    h, f = res.handoff, res.failover
    timing_row(t, res.kind, h, "handoff", "graceful handoff", "p50 < 100 ms", 0.1)
    target, bound = failover_target(res.kind, ttl)
    timing_row(t, res.kind, f, "failover", "crash failover", target, bound, ", kill -9")
    if res.idle.window > 0:
        idle_rows(t, res)
    timing_row(t, res.kind, res.start, "start", "start to child exec", "p50 < 300 ms", 0.3)
    timing_row(t, res.kind, res.exit, "exit", "start to exit, running `true`", "", math.inf)
    if res.child_start:
        alone = report.ms(percentile(res.child_start, 50))
        t.notes.append(
            f"the child alone, spawned directly, takes {alone} (p50) to its first act; "
            "handoff, failover and start times include that"
        )
    if res.scale and res.server_alone_cpu is not None:
        t.add("backend CPU with no client (server alone)", report.pct(res.server_alone_cpu))
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
                why("scale", res.kind),
            )
        if sc.backend_idle_cpu is not None:
            t.add(
                f"{prefix}: backend CPU idle / during handoffs",
                f"{report.pct(sc.backend_idle_cpu)} / {report.pct(sc.backend_handoff_cpu)}",
                "idle < 10% of a core",
                sc.backend_idle_cpu < 0.10,
                why("backend_cpu", res.kind),
            )
        if sc.supervisor_rss:  # measured to the end of the idle window
            t.add(
                f"{prefix}: all standbys' CPU together, idle",
                f"{cpu(sc.standbys_cpu, sc.window)} ({sc.supervisor_rss:.1f} MiB RSS each)",
            )
        if sc.stopped_early:
            t.notes.append(f"scale {sc.wanted}: {sc.stopped_early}")
        if sc.handoffs.lost:
            t.notes.append(
                f"scale {sc.wanted}: {sc.handoffs.lost} rounds skipped: the holder had died "
                "without being told to"
            )
        if sc.lost:
            t.notes.append(f"scale {sc.wanted}: {sc.lost}; the rows count the others")
        if sc.spawn_seconds:
            t.notes.append(f"scale {sc.wanted}: {n} standbys started in {sc.spawn_seconds:.0f} s")
    events = len(h.samples) + len(f.samples) + sum(len(sc.handoffs.samples) for sc in res.scale)
    overlaps = h.overlaps + f.overlaps + sum(sc.handoffs.overlaps for sc in res.scale)
    t.add(
        "two children at once",
        f"{overlaps} in {events} takeovers",
        "0",
        overlaps == 0 if events else None,
    )
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
    if theirs.label == "single-beat":
        title = f"coordinator vs single-beat {singlebeat.VERSION} on the same Redis"
        title += f" (ttl {ours.ttl:g} s)"
    else:
        title = f"coordinator (ttl {ours.ttl:g} s) vs {theirs.label} (ttl {theirs.ttl:g} s)"
        title += f" on the same {ours.kind} agent"
    c = report.Comparison(title, theirs.label)
    if theirs.skipped:
        c.compare("all", "-", f"not run: {theirs.skipped}", "-")
        return c
    c.compare(
        "graceful handoff p50",
        report.duration(p50(ours.handoff)),
        report.duration(p50(theirs.handoff)),
        report.ratio(p50(theirs.handoff), p50(ours.handoff)),
        ">= 25x faster" if theirs.label == "single-beat" else "",
        p50(theirs.handoff) >= 25 * p50(ours.handoff)
        if ours.handoff.samples and theirs.handoff.samples and theirs.label == "single-beat"
        else None,
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
            a, b = a / ours.ttl, b / theirs.ttl
            c.compare(who, f"{a:.2f}", f"{b:.2f}", report.ratio(b, a))
        sb = theirs.label == "single-beat"
        c.compare(
            "supervisor RSS (holder)",
            f"{oi.holder_rss:.1f} MiB",
            f"{ti.holder_rss:.1f} MiB",
            report.ratio(ti.holder_rss, oi.holder_rss),
            "<= 0.9 x single-beat" if sb else "",
            oi.holder_rss <= 0.9 * ti.holder_rss if sb else None,
        )
        if oi.holder_pss is not None and ti.holder_pss is not None:
            c.compare(
                "supervisor PSS (holder)",
                f"{oi.holder_pss:.1f} MiB",
                f"{ti.holder_pss:.1f} MiB",
                report.ratio(ti.holder_pss, oi.holder_pss),
            )
        if oi.watchdog_rss is not None:
            c.compare(
                "holder's watchdog RSS / PSS",
                f"{oi.watchdog_rss:.1f} / {oi.watchdog_pss or 0:.1f} MiB",
                "none",
                "-",
            )
        # Three clock ticks over the window: below that a ratio is noise.
        floor = 3 / TICK / min(oi.window, ti.window)
        c.compare(
            "idle CPU holder",
            cpu(oi.holder_cpu, oi.window),
            cpu(ti.holder_cpu, ti.window),
            report.ratio(ti.holder_cpu, oi.holder_cpu, floor=floor),
        )
        c.compare(
            "idle CPU standby",
            cpu(oi.standby_cpu, oi.window),
            cpu(ti.standby_cpu, ti.window),
            report.ratio(ti.standby_cpu, oi.standby_cpu, floor=floor),
        )
    c.compare(
        "start to child exec p50",
        report.duration(p50(ours.start)),
        report.duration(p50(theirs.start)),
        report.ratio(p50(theirs.start), p50(ours.start)),
    )
    if ours.exit.samples and theirs.exit.samples:
        sb = theirs.label == "single-beat"
        c.compare(
            f"start to exit, running `true`, p50 (n={len(ours.exit.samples)}, taking turns)",
            report.duration(p50(ours.exit)),
            report.duration(p50(theirs.exit)),
            report.ratio(p50(theirs.exit), p50(ours.exit)),
            "<= single-beat" if sb else "",
            p50(ours.exit) <= p50(theirs.exit) if sb else None,
        )
    for mine, other in zip(ours.scale, theirs.scale, strict=False):
        if mine.backend_idle_cpu is not None and other.backend_idle_cpu is not None:
            c.compare(
                f"{ours.kind} CPU, {other.standbys} standbys idle",
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
