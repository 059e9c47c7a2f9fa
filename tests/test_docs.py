"""The troubleshooting page explains every line the program logs above debug level."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.cluster import ROOT

PLACEHOLDER = re.compile(r"%[-+ #0-9.]*[sdfgr]")
LEVELS = ("info", "warning", "error")


def message_of(call: ast.Call) -> ast.expr | None:
    """The message argument of a logging call at info level or above, or of
    Supervisor._enter (which logs its sentence); None for anything else."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr in LEVELS and call.args:
        receiver = func.value
        is_logger = not isinstance(receiver, ast.Name) or receiver.id in ("log", "logging")
        return call.args[0] if is_logger else None
    if func.attr in ("log", "_enter") and len(call.args) > 1:
        return call.args[1]
    return None


def pattern_of(message: ast.expr) -> str | None:
    """A regex for the logged line: literal text, anything where a value goes."""
    if isinstance(message, ast.Constant) and isinstance(message.value, str):
        return ".+?".join(re.escape(piece) for piece in PLACEHOLDER.split(message.value))
    if isinstance(message, ast.JoinedStr):
        return "".join(
            re.escape(part.value) if isinstance(part, ast.Constant) else ".+?"
            for part in message.values
            if not (isinstance(part, ast.Constant) and not isinstance(part.value, str))
        )
    return None  # a variable: the sentence is checked where it is built


def logged_lines() -> list[str]:
    patterns = []
    for path in sorted((Path(ROOT) / "coordinator").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and (message := message_of(node)) is not None:
                pattern = pattern_of(message)
                if pattern is not None:
                    patterns.append(pattern)
    return patterns


def test_troubleshooting_explains_every_log_line() -> None:
    patterns = logged_lines()
    assert len(patterns) > 20, patterns  # the walk does find the supervisor's lines
    lines = (Path(ROOT) / "docs" / "troubleshooting.md").read_text().splitlines()
    missing = [p for p in patterns if not any(re.search(p, line) for line in lines)]
    assert not missing, f"lines not explained in docs/troubleshooting.md: {missing}"


def test_no_merge_conflict_markers_are_committed() -> None:
    """A marker left by a merge makes a document say two things at once."""
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    root = Path(ROOT)
    files = [*root.glob("*.md"), *root.glob("*.toml")]
    for folder in ("coordinator", "tests", "benchmarks", "compose", "scripts", "docs", ".ci"):
        files += [path for path in (root / folder).rglob("*") if path.is_file()]
    found = [
        str(path.relative_to(root))
        for path in files
        if "__pycache__" not in path.parts and marker.search(path.read_text(errors="replace"))
    ]
    assert found == []
