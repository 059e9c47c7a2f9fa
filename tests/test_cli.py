"""The command line surface: help, env vars, completion."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from coordinator import options
from tests.cluster import ROOT, run_cli


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, timeout=20)


def test_help_shows_every_option_with_its_env_var() -> None:
    for command, words in ((options.RUN, ()), (options.STATUS, ("status",))):
        result = run(*words, "--help")
        assert result.returncode == 0
        text = " ".join(result.stdout.split())
        for option in options.for_command(command):
            assert option.name in text, option
            assert option.env in text, option
            assert " ".join(option.help.split()) in text, option


def test_the_readme_option_table_is_the_parsers() -> None:
    """README.md's table of options says what coordinator/options.py declares: each
    option of `coordinator`, its short form, variable and default, in that order."""
    readme = (Path(ROOT) / "README.md").read_text()
    section = readme.split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = [
        [cell.strip().replace("`", "") for cell in line.strip("|").split("|")[:3]]
        for line in section.splitlines()
        if line.startswith("| `--")
    ]
    wanted = [
        [
            ", ".join(filter(None, (option.name, option.short))),
            option.env,
            options.shown_default(option),
        ]
        for option in options.for_command(options.RUN)
    ]
    assert rows == wanted


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
    words = {"COMP_WORDS": "coordinator --ba", "COMP_CWORD": "1"}
    result = run(env={"_COORDINATOR_COMPLETE": "bash_complete", **words})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,--backend"]
    # The script installed by earlier versions asks in typer's words, for bare words.
    result = run(env={"_COORDINATOR_COMPLETE": "complete_bash", **words})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--backend"]


def test_completion_is_shown_and_installed(tmp_path: Path) -> None:
    env = {"SHELL": "/bin/bash", "HOME": str(tmp_path)}
    shown = run("--show-completion", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "_COORDINATOR_COMPLETE=bash_complete" in shown.stdout
    installed = run("--install-completion", env=env)
    assert installed.returncode == 0, installed.stderr
    script = tmp_path / ".bash_completions" / "coordinator.sh"
    assert script.read_text().strip() == shown.stdout.strip()
    assert f"source {script}" in (tmp_path / ".bashrc").read_text()
    unknown = run("--show-completion", env={"SHELL": "/bin/tcsh"})
    assert unknown.returncode == 2
    assert re.search(r"cannot tell which shell .*tcsh", unknown.stderr), unknown.stderr
