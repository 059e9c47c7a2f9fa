"""Where a supervisor's resident memory and start time go: `python -m benchmarks.memory`.

For each backend, a fresh interpreter imports what the CLI imports, group by group in
the CLI's order, and reports VmRSS and the time after each group. It parses a command
line as the CLI does, so lazily imported modules (a CLI library converting option
values) are counted too. The last group is the backend's client library. It runs in the
benchmark's virtualenv of coordinator's dependencies (see benchmarks/run), else here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.procs import ROOT, python_env
from benchmarks.singlebeat import coordinator_python

GROUPS: list[tuple[str, str]] = [
    (
        "standard library used by the core",
        "import logging, ctypes, concurrent.futures, subprocess, socket, select, "
        "threading, shlex, urllib.parse, json",
    ),
    ("dataclasses (imports inspect)", "import dataclasses"),
    (
        "coordinator's own modules",
        "import coordinator.config, coordinator.errors, coordinator.events, "
        "coordinator.child, coordinator.supervisor, coordinator.backends.base",
    ),
    ("the CLI library (click)", "import click, coordinator.cli"),
    (
        "parsing a command line",
        "cmd = coordinator.cli.build('run'); "
        "cmd.make_context('coordinator', ['--backend', KIND, '--name', 'x', '--', 'true'])",
    ),
    ("the backend module and its client library", "import coordinator.backends.KIND"),
]

PROBE = """
import json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
KIND = sys.argv[1]
steps = [("interpreter", rss(), 0.0, len(sys.modules))]
for label, code in json.loads(sys.argv[2]):
    started = time.perf_counter()
    exec(code.replace("KIND", repr(KIND)) if "make_context" in code
         else code.replace("KIND", KIND))
    steps.append((label, rss(), time.perf_counter() - started, len(sys.modules)))
print(json.dumps(steps))
"""


def breakdown(kind: str, python: str) -> list[tuple[str, float, float, int]]:
    out = subprocess.run(
        [python, "-c", PROBE, kind, json.dumps(GROUPS)],
        capture_output=True,
        text=True,
        env=python_env(PYTHONPATH=str(ROOT)),
        check=True,
        cwd=ROOT,
    ).stdout
    return [(str(a), float(b), float(c), int(d)) for a, b, c, d in json.loads(out)]


def main() -> None:
    kinds = sys.argv[1:] or ["file", "redis", "postgres", "consul"]
    try:
        python = coordinator_python()
    except (RuntimeError, OSError) as exc:
        print(f"no virtualenv of coordinator's dependencies ({exc}): using {sys.executable}")
        python = sys.executable
    print(f"interpreter: {python}\n")
    breakdown(kinds[0], python)  # fills the bytecode cache, so no step pays for compiling
    for kind in kinds:
        print(f"{kind}:")
        previous = 0.0
        for label, rss, seconds, modules in breakdown(kind, python):
            delta = f"+{rss - previous:5.1f}" if previous else "      "
            print(
                f"  {label:58} {rss:5.1f} MiB {delta}  {seconds * 1000:4.0f} ms  {modules} modules"
            )
            previous = rss
        print()


if __name__ == "__main__":
    main()
