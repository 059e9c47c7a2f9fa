"""What a supervisor imports, per backend: no module it does not need.

Every module a process imports stays resident and costs start time (docs/benchmarks.md
has the figures). A real supervisor runs `true` on a real server, in an interpreter
started with -I -S (so the site's .pth files import nothing of their own), and lists
at its exit every module imported since it started: a deterministic check, no timing.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import ROOT

# Records sys.modules at its start and at its exit, around coordinator's own main().
WRAPPER = """
import atexit, json, sys
before = set(sys.modules)
out, paths, args = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
sys.path[:0] = paths

def dump():
    with open(out, "w") as f:
        json.dump(sorted(set(sys.modules) - before), f)

atexit.register(dump)
sys.argv = ["coordinator", *args]
from coordinator.cli import main
main()
"""

# Never, whatever the backend: the CLI library's value converters and their
# dependencies, the optional metrics client, and what only `status` or a status file
# needs.
NEVER = {
    "typer",
    "pydantic",
    "pydantic_core",
    "rich",
    "email",
    "zoneinfo",
    "prometheus_client",
    "http.server",
    "tempfile",
    "coordinator.metrics",
    "coordinator.status",
    "coordinator.completion",
}
CLIENTS = {"redis", "psycopg", "consul", "requests", "urllib3"}
# OpenSSL (ssl maps libssl, _hashlib libcrypto) and what imports it; asyncio. The
# client libraries import some of these themselves, and a backend may have those:
# redis-py imports ssl, asyncio, hashlib, importlib.metadata (email, tempfile) and, when
# it connects, secrets; psycopg ssl, asyncio, ctypes.util (tempfile), importlib.metadata
# and, when it connects, zoneinfo; requests
# (under py-consul) ssl, hashlib and hmac, http.client (email); py-consul
# importlib.metadata.
HEAVY = {"ssl", "_ssl", "_hashlib", "hashlib", "hmac", "secrets", "asyncio", "redis.asyncio"}
ALLOWED = {
    "file": set(),
    "redis": {"redis", "ssl", "_ssl", "_hashlib", "hashlib", "asyncio", "redis.asyncio"}
    | {"email", "tempfile", "secrets", "hmac"},
    "postgres": {"psycopg", "ssl", "_ssl", "asyncio", "zoneinfo", "email", "tempfile"},
    "consul": {"consul", "requests", "urllib3", "ssl", "_ssl", "_hashlib", "hashlib", "hmac"}
    | {"email", "tempfile"},
}


def imported(backend: str, url: str, tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    paths = [ROOT, *site.getsitepackages(), site.getusersitepackages()]
    args = ["--backend", backend, "--url", url, "--name", f"imports-{backend}"]
    args += ["--safety-delay", "0", "--ttl", "5", "--grace", "1", "--", "true"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", WRAPPER, str(out), json.dumps(paths), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(out.read_text()))


def top(modules: set[str], names: set[str]) -> set[str]:
    """The names in `names` that were imported, themselves or any of their submodules."""
    return {n for n in names if any(m == n or m.startswith(f"{n}.") for m in modules)}


@pytest.mark.parametrize("backend", ["file", "redis", "postgres", "consul"])
def test_a_supervisor_imports_only_what_its_backend_needs(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(tmp_path / "locks")
    if backend != "file":
        url = request.getfixturevalue(f"{backend}_url")
    modules = imported(backend, url, tmp_path)
    assert "coordinator.supervisor" in modules  # it did run
    unwanted = top(modules, NEVER | CLIENTS | HEAVY) - ALLOWED[backend]
    assert not unwanted, f"{backend} supervisor imported {sorted(unwanted)}"
