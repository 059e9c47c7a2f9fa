"""The fault-injection runner: `python -m tests.faults [--quick | --long] ...`.

Starts its own servers (it pauses and restarts them; COORDINATOR_TEST_*_URL selects an
external server instead, and the server faults are then left out), three supervisors
per backend, applies every fault in shuffled rounds, prints a table per backend and
exits 1 unless every row meets the bar. Besides the four backends, --backends takes
the names of the topology benches (tests/faults/benches.py: replicas, poolers, TLS).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tests.faults import consul_cluster
from tests.faults.benches import registered
from tests.faults.check import Round, Summary, history_problems
from tests.faults.faults import FAULTS, applicable, one_round
from tests.faults.harness import Bench
from tests.faults.sentinel import FAULTS as SENTINEL_FAULTS
from tests.faults.sentinel import KIND as SENTINEL
from tests.faults.sentinel import run_sentinel
from tests.servers import ConsulServer, PostgresServer, RedisServer, ServerProcess, settled
from tests.store import Store

BACKENDS = ("file", "redis", "postgres", "consul", SENTINEL, consul_cluster.KIND)
QUICK_ROUNDS, LONG_ROUNDS = 2, 25
# Backends whose rounds are too long for two in the quick mode (none since Consul's
# takeover is bound by its ttl).
QUICK_ROUNDS_FOR: dict[str, int] = {}
# On a node pause the old child runs again for a moment after SIGCONT, until the
# watchdog or the supervisor (both resumed too) kill it: it must be brief.
RESUME_LIMIT = 1.0


def open_store(kind: str, tmp: Path) -> tuple[Store, ServerProcess | None]:
    prefix = f"faults-{uuid.uuid4().hex[:8]}/"
    if kind == "file":
        return Store(kind, str(tmp / "locks"), prefix), None
    external = os.environ.get(f"COORDINATOR_TEST_{kind.upper()}_URL")
    if external:
        return Store(kind, external, prefix), None
    server: ServerProcess
    if kind == "redis":
        server = RedisServer(tmp)
    elif kind == "postgres":
        server = settled(PostgresServer())
    else:
        server = ConsulServer(tmp)
    return Store(kind, server.url, prefix), server


def verdict(summary: Summary) -> str:
    """'ok', or why the row misses the bar."""
    if summary.problems:
        return "FAIL: " + "; ".join(sorted(set(summary.problems)))
    if summary.orphans:
        return "FAIL: orphans"
    if summary.fault == "node-pause":
        if summary.ran_after_resume is None or summary.ran_after_resume > RESUME_LIMIT:
            return f"FAIL: old child lived on more than {RESUME_LIMIT}s after SIGCONT"
    elif summary.overlaps:
        return "FAIL: two children at once"
    return "ok"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def play(
    bench: Bench,
    chosen: list[str],
    rounds: int,
    seed: int,
    round_of: Callable[[str, random.Random], Round],
) -> list[Summary]:
    """`rounds` rounds of each fault in `chosen`, shuffled by `seed`, on `bench`; a row
    a fault, and one more when the fencing tokens of the whole run went wrong."""
    order = chosen * rounds
    rng = random.Random(seed)
    rng.shuffle(order)
    bench.start_all()
    results: dict[str, list[Round]] = {f: [] for f in chosen}
    for fault in order:
        results[fault].append(round_of(fault, rng))
    summaries = [Summary.of(f, results[f]) for f in chosen]
    history = history_problems(bench.events(), bench.data_lost_at)
    if history:
        summaries.append(Summary("history", 1, 0, 0.0, None, None, 0, history, None))
    if any(verdict(s) != "ok" for s in summaries):
        print("\n".join(bench.node_log_tail()), file=sys.stderr)
    return summaries


def table(title: str, summaries: list[Summary]) -> str:
    width = max(17, *(len(s.fault) + 1 for s in summaries))
    head = (
        f"{'fault':<{width}}{'rounds':>7}{'overlaps':>9}{'longest':>9}"
        f"{'takeover p50':>14}{'p99':>8}{'orphans':>8}{'after resume':>14}  result"
    )
    lines = [title, head, "-" * len(head)]
    for s in summaries:
        lines.append(
            f"{s.fault:<{width}}{s.rounds:>7}{s.overlaps:>9}{seconds(s.longest_overlap):>9}"
            f"{seconds(s.takeover_p50):>14}{seconds(s.takeover_p99):>8}{s.orphans:>8}"
            f"{seconds(s.ran_after_resume):>14}  {verdict(s)}"
        )
    return "\n".join(lines)


def open_bench(kind: str, tmp: Path) -> tuple[Bench, ServerProcess | None, list[str], bool]:
    """The bench, a server to close after it, the faults that apply, whether the
    server is external."""
    spec = registered().get(kind)
    if spec is not None:
        return spec.make(tmp), None, spec.names, False
    store, server = open_store(kind, tmp)
    bench = Bench(store, server, tmp)
    external = server is None and kind != "file"
    return bench, server, applicable(bench), external


def run_backend(
    kind: str, faults: list[str], rounds: int, seed: int, tmp: Path
) -> tuple[str, list[Summary]]:
    if kind == SENTINEL:  # topologies with runners of their own
        return run_sentinel(faults, rounds, seed, tmp)
    if kind == consul_cluster.KIND:
        return consul_cluster.run(faults, rounds, seed, tmp)
    bench, server, names, external = open_bench(kind, tmp)
    spec = registered().get(kind)
    where = {**FAULTS, **spec.extra} if spec else FAULTS
    try:
        chosen = [f for f in names if f in faults]
        summaries = play(
            bench, chosen, rounds, seed, lambda fault, rng: one_round(bench, fault, rng, where)
        )
        title = (
            f"{kind}: ttl {bench.ttl:g}s, grace {bench.grace:g}s, {len(bench.nodes)} supervisors, "
            f"seed {seed}" + (", external server" if external else "")
        )
        return table(title, summaries), summaries
    finally:
        bench.close()
        if server is not None:
            server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_ROUNDS} rounds per fault (a topology bench: its quick_rounds, 1)",
    )
    mode.add_argument("--long", action="store_true", help=f"{LONG_ROUNDS} rounds per fault")
    mode.add_argument("--rounds", type=int, help="rounds per fault")
    benches = registered()
    every_fault = [
        *FAULTS,
        *SENTINEL_FAULTS,
        *consul_cluster.FAULTS,
        *(f for spec in benches.values() for f in spec.extra),
    ]
    parser.add_argument(
        "--backends",
        default=",".join([*BACKENDS, *benches]),
        help=f"of {', '.join([*BACKENDS, *benches])}",
    )
    parser.add_argument("--faults", default=",".join(dict.fromkeys(every_fault)))
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    # Leave through the finally blocks, which stop the servers and supervisors.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    long_or_quick = LONG_ROUNDS if args.long else None
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    faults = args.faults.split(",")
    unknown = [f for f in faults if f not in every_fault] + [
        b for b in args.backends.split(",") if b not in BACKENDS and b not in benches
    ]
    if unknown:
        parser.error(f"unknown fault or backend: {', '.join(unknown)}")
    report: dict[str, list[dict[str, object]]] = {}
    ok = True
    for kind in args.backends.split(","):
        quick = benches[kind].quick_rounds if kind in benches else QUICK_ROUNDS
        rounds = args.rounds or long_or_quick or QUICK_ROUNDS_FOR.get(kind, quick)
        with tempfile.TemporaryDirectory(prefix=f"coordinator-faults-{kind}-") as tmp:
            text, summaries = run_backend(kind, faults, rounds, seed, Path(tmp))
        print(text + "\n", flush=True)
        report[kind] = [asdict(s) for s in summaries]
        ok = ok and all(verdict(s) == "ok" for s in summaries)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
