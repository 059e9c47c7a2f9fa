"""Benches beyond one plain server per backend (replicas, poolers, TLS, clusters).

Any module of this package that defines `BENCHES` (a name -> BenchSpec dict) adds its
benches to the runner: `python -m tests.faults --backends NAME`, `--long`, and the
rounds CI runs (tests/test_fault_topologies.py runs each bench's `quick` faults).
No other file needs an edit. A name starts with the backend kind ("postgres-standby"):
with COORDINATOR_TEST_<KIND>_URL set (servers from elsewhere) CI skips the bench, which
starts servers of its own. Names must not clash across modules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.faults import Fault
from tests.faults.harness import Bench


@dataclass(frozen=True)
class BenchSpec:
    #: Starts the servers and the bench's supervisors-to-be; Bench.close() stops them all.
    make: Callable[[Path], Bench]
    #: The faults of tests.faults.faults.FAULTS that make sense on this bench.
    faults: tuple[str, ...]
    #: Faults of its own, by name.
    extra: dict[str, Fault] = field(default_factory=dict)
    #: What CI runs, one round each by default (None: every fault).
    quick: tuple[str, ...] | None = None
    quick_rounds: int = 1
    about: str = ""

    @property
    def names(self) -> list[str]:
        return [*self.faults, *self.extra]


def registered() -> dict[str, BenchSpec]:
    """Every BENCHES of every module of tests.faults, by name."""
    package = importlib.import_module("tests.faults")
    found: dict[str, BenchSpec] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"tests.faults.{info.name}")
        for name, spec in getattr(module, "BENCHES", {}).items():
            if name in found:
                raise RuntimeError(f"fault bench {name!r} is defined twice")
            found[name] = spec
    return found
