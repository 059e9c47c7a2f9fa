"""The command line surface: help, env vars, completion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cluster import run_cli


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=20)


def test_help_shows_every_option_with_its_env_var() -> None:
    result = run("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option, var in [
        ("--backend", "COORDINATOR_BACKEND"),
        ("--url", "COORDINATOR_URL"),
        ("--name", "COORDINATOR_NAME"),
        ("--ttl", "COORDINATOR_TTL"),
        ("--grace", "COORDINATOR_GRACE"),
        ("--node-id", "COORDINATOR_NODE_ID"),
        ("--wait-timeout", "COORDINATOR_WAIT_TIMEOUT"),
        ("--safety-delay", "COORDINATOR_SAFETY_DELAY"),
        ("--key-prefix", "COORDINATOR_KEY_PREFIX"),
        ("--log-level", "COORDINATOR_LOG_LEVEL"),
        ("--log-format", "COORDINATOR_LOG_FORMAT"),
        ("--metrics-address", "COORDINATOR_METRICS_ADDRESS"),
        ("--status-file", "COORDINATOR_STATUS_FILE"),
    ]:
        assert option in text and var in text, option


def test_env_vars_are_read(tmp_path: Path) -> None:
    result = run(
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['COORDINATOR_NAME'], os.environ['COORDINATOR_NODE_ID'])",
        env={
            "COORDINATOR_NAME": "from-env",
            "COORDINATOR_NODE_ID": "node-7",
            "COORDINATOR_URL": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["from-env", "node-7"]
    assert (tmp_path / "from-env.lock").exists()


def test_options_after_the_command_belong_to_the_child(tmp_path: Path) -> None:
    result = run(
        "--url",
        str(tmp_path),
        sys.executable,
        "-c",
        "import sys; print(sys.argv[1:])",
        "--name",
        "--ttl",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['--name', '--ttl']"


def test_default_name_comes_from_the_command(tmp_path: Path) -> None:
    result = run("--url", str(tmp_path), "--", "/bin/true", "x")
    assert result.returncode == 0, result.stderr
    [lock] = list(tmp_path.glob("*.lock"))
    assert lock.name.startswith("true-x-")
    # Same command from another path: the same lock.
    result = run("--url", str(tmp_path), "--", "/usr/bin/true", "x")
    assert [p.name for p in tmp_path.glob("*.lock")] == [lock.name]


def test_shell_completion_completes_options() -> None:
    result = run(
        env={
            "_COORDINATOR_COMPLETE": "complete_bash",
            "COMP_WORDS": "coordinator --ba",
            "COMP_CWORD": "1",
        }
    )
    assert result.returncode == 0
    assert "--backend" in result.stdout
