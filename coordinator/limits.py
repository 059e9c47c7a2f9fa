"""Ranges of the numeric options and rules for names, shared by the backends.

Each backend's create() adds its own limits (see docs/limits.md); a value outside its
range is refused at start with one line, never adjusted and never retried.
"""

from __future__ import annotations

import math
import unicodedata

from coordinator.errors import ConfigError

# Below this the fixed margin (0.1 s) and the call timeout leave no room for a grace.
MIN_TTL = 0.5
# The supervisor's own timers: select() and lock waits overflow near 9.2e9 s.
MAX_SECONDS = 1e9
MAX_NAME = 200  # characters of --name and --node-id
MAX_PREFIX = 100  # characters of --key-prefix


def seconds(option: str, value: float, low: float, high: float, *, above: bool = False) -> None:
    """Refuse a duration outside [low, high] (or (low, high] with `above`), inf and nan."""
    below = value <= low if above else value < low
    if math.isnan(value) or below or value > high:
        span = f"more than {low:g} and at most" if above else f"from {low:g} to"
        raise ConfigError(f"{option} must be {span} {high:g} seconds, got {value:g}")


def text(option: str, value: str, longest: int) -> None:
    """Names end up in keys, file names, logs and JSON: printable UTF-8 only."""
    if len(value) > longest:
        raise ConfigError(f"{option} is {len(value)} characters long; at most {longest} allowed")
    for char in value:
        # Control characters and line separators would split log lines; a surrogate
        # is a byte of the command line that is not UTF-8.
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise ConfigError(
                f"{option} must not contain control characters, line separators or "
                f"invalid UTF-8, got {value!r}"
            )
