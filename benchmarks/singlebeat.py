"""single-beat, the tool compared against: installed from PyPI into its own
virtualenv under the cache directory, once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VERSION = "0.6.3"


def cache_dir() -> Path:
    base = os.environ.get("COORDINATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "coordinator"
    )
    return Path(base) / "bench"


def install() -> str:
    """The path of the single-beat executable; raises RuntimeError saying why not."""
    return venv(f"single-beat-{VERSION}", [f"single-beat=={VERSION}"], "single-beat")


# coordinator's client libraries and CLI library, at the versions this interpreter has.
DEPENDENCIES = ("click", "redis", "psycopg", "psycopg-binary", "py-consul")


def coordinator_python() -> str:
    """A Python whose site-packages hold only coordinator's dependencies, at the
    versions installed here, as single-beat has its own: both start from a clean
    interpreter (a development environment's .pth files import modules of their own
    at every start). The supervisors import coordinator itself from the checkout."""
    from importlib import metadata

    try:
        pins = [f"{name}=={metadata.version(name)}" for name in DEPENDENCIES]
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"{exc.name} is not installed here") from exc
    tag = "-".join(pin.split("==")[1] for pin in pins)
    return venv(f"coordinator-deps-{tag}", pins, "python")


def venv(name: str, packages: list[str], program: str) -> str:
    """`program` from a virtualenv of the cache directory holding `packages`, made
    once; raises RuntimeError saying why not."""
    home = cache_dir() / name
    executable = home / "bin" / program
    marker = home / ".installed"
    if executable.exists() and (marker.exists() or program != "python"):
        return str(executable)
    home.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", str(home)],
        [str(home / "bin" / "python"), "-m", "pip", "install", "-q", *packages],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(f"could not install {name}: {' '.join(lines[-2:])}")
    if not executable.exists():
        raise RuntimeError(f"{name} installed no {program}")
    marker.touch()
    return str(executable)
