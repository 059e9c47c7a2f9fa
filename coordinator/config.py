"""One frozen, validated configuration, and the timing rule that keeps it safe."""

from __future__ import annotations

import os
import re
import shlex
import socket
from dataclasses import dataclass, field

from coordinator import limits
from coordinator.errors import ConfigError
from coordinator.hashing import sha256
from coordinator.options import DEFAULT_GRACE, DEFAULT_TTL
from coordinator.redact import redact_url

__all__ = ["Config", "default_name", "default_node_id", "redact_url"]

LOG_LEVELS = ("debug", "info", "warning", "error")


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_name(command: tuple[str, ...]) -> str:
    """The lock name used when --name is absent: derived from the command line.

    Every node running the same line contends for the same lock, and two different
    commands never block each other. Only the program's base name is kept, so
    installs at different paths on different nodes still agree.
    """
    if not command:
        raise ConfigError("no command given: put the command after '--'")
    words = (os.path.basename(command[0]), *command[1:])
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", " ".join(words)).strip("-")[:48]
    # surrogatepass: a command line word that is not UTF-8 still hashes, the same on
    # every node.
    digest = sha256(shlex.join(words).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}-{digest}"


@dataclass(frozen=True)
class Config:
    command: tuple[str, ...]
    backend: str = "file"
    url: str | None = None
    name: str = ""
    ttl: float = DEFAULT_TTL
    grace: float = DEFAULT_GRACE
    node_id: str = field(default_factory=default_node_id)
    wait_timeout: float | None = None
    safety_delay: float | None = None
    key_prefix: str = "coordinator/"
    log_level: str = "info"
    consul_node_check: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", default_name(self.command))
        self.validate()

    # The timing rule. A lease renewed at time t (when the request was SENT) is ours
    # until t + ttl. Renewal is attempted every ttl/3, each call bounded by
    # call_timeout. If no renewal has succeeded by t + ttl - grace - margin, the child
    # gets TERM, and KILL grace seconds later: it is reaped `margin` before the lease
    # could expire anywhere.

    @property
    def renew_interval(self) -> float:
        return self.ttl / 3

    @property
    def call_timeout(self) -> float:
        """Hard limit on one backend call: short enough that a stuck call cannot
        use up the time left for a retry before the fencing point."""
        return min(self.ttl / 6, 5.0)

    @property
    def margin(self) -> float:
        """Slack for reaping the child and scheduling delays on a loaded host."""
        return max(0.1, self.ttl * 0.02)

    @property
    def max_grace(self) -> float:
        return self.ttl - self.renew_interval - self.call_timeout - self.margin

    @property
    def effective_safety_delay(self) -> float:
        return self.ttl if self.safety_delay is None else self.safety_delay

    def validate(self) -> None:
        if not self.command:
            raise ConfigError("no command given: put the command after '--'")
        if not self.name.strip():
            raise ConfigError("--name must not be empty")
        limits.text("--name", self.name, limits.MAX_NAME)
        limits.text("--node-id", self.node_id, limits.MAX_NAME)
        limits.text("--key-prefix", self.key_prefix, limits.MAX_PREFIX)
        limits.seconds("--ttl", self.ttl, limits.MIN_TTL, limits.MAX_SECONDS)
        limits.seconds("--grace", self.grace, 0, limits.MAX_SECONDS)
        if self.grace >= self.max_grace:
            raise ConfigError(
                f"--grace {self.grace:g}s is too long for --ttl {self.ttl:g}s: the child must be "
                f"stopped before the lease can expire, so grace must be below "
                f"{self.max_grace:.2f}s (ttl - ttl/3 - call timeout {self.call_timeout:.2f}s - "
                f"margin {self.margin:.2f}s); raise --ttl or lower --grace"
            )
        if self.wait_timeout is not None:
            limits.seconds("--wait-timeout", self.wait_timeout, 0, limits.MAX_SECONDS)
        if self.safety_delay is not None:
            limits.seconds("--safety-delay", self.safety_delay, 0, limits.MAX_SECONDS)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"unknown log level {self.log_level!r} (choose from {', '.join(LOG_LEVELS)})"
            )
