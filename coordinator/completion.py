"""Shell completion: `--show-completion`, `--install-completion`, and the answers the
installed script asks for through _COORDINATOR_COMPLETE. Imported only for those."""

from __future__ import annotations

import os
from pathlib import Path

import click
from click.shell_completion import ShellComplete, get_completion_class

from coordinator.errors import ConfigError
from coordinator.output import emit

PROG, VARIABLE = "coordinator", "_COORDINATOR_COMPLETE"

# Where --install-completion puts the script, and the line that loads it.
PLACES = {
    "bash": ("~/.bash_completions/coordinator.sh", "~/.bashrc"),
    "zsh": ("~/.zfunc/coordinator.zsh", "~/.zshrc"),
    "fish": ("~/.config/fish/completions/coordinator.fish", ""),
}


def complete(command: click.Command, instruction: str) -> int:
    """Answer the completion script. Scripts installed by earlier versions (built with
    typer) ask `complete_bash`, where click asks `bash_complete`."""
    shell, _, action = instruction.partition("_")
    try:
        if shell in ("complete", "source") and action:  # typer's order: complete_bash
            shell, action = action, shell
            if action == "complete" and shell == "bash":
                # The earlier bash script takes one bare word per line.
                words, incomplete = _words()
                for item in _completer(command, "bash").get_completions(words, incomplete):
                    emit(item.value)
                return 0
        # click's shell_complete(), written through coordinator.output.
        cls = get_completion_class(shell)
        if cls is None or action not in ("source", "complete"):
            return 1
        comp = cls(command, {}, PROG, VARIABLE)
        emit(comp.source() if action == "source" else comp.complete())
        return 0
    except (KeyError, ValueError) as exc:
        # Only a shell's completion script sets these; by hand they can be anything.
        raise ConfigError(
            f"shell completion needs COMP_WORDS and a word number in COMP_CWORD "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _words() -> tuple[list[str], str]:
    words = os.environ.get("COMP_WORDS", "").split()
    cword = max(0, int(os.environ.get("COMP_CWORD", "0") or 0))
    args = words[1:cword]
    incomplete = words[cword] if cword < len(words) else ""
    return args, incomplete


def _completer(command: click.Command, shell: str) -> ShellComplete:
    cls = get_completion_class(shell)
    if cls is None:
        raise ConfigError(f"no shell completion for {shell!r}: bash, zsh and fish have it")
    return cls(command, {}, PROG, VARIABLE)


def _shell() -> str:
    shell = os.path.basename(os.environ.get("SHELL", ""))
    if shell not in PLACES:
        raise ConfigError(
            f"cannot tell which shell to complete for (SHELL={shell or 'unset'}): "
            "bash, zsh and fish have completion"
        )
    return shell


def act(command: click.Command, which: str) -> None:
    """--show-completion prints the script; --install-completion installs it."""
    shell = _shell()
    script = _completer(command, shell).source()
    if which == "show_completion":
        emit(script)
        return
    target, rc = (Path(os.path.expanduser(p)) if p else None for p in PLACES[shell])
    assert target is not None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(script + "\n")
        if rc is not None:
            line = f"source {target}"
            text = rc.read_text() if rc.exists() else ""
            if line not in text:
                with rc.open("a") as f:
                    f.write(f"\n{line}\n")
    except OSError as exc:
        raise ConfigError(f"cannot install the completion script: {exc}") from exc
    emit(f"{shell} completion installed in {target}; it works in new shells.")
