"""Every command line option, declared once.

The table feeds the parser of `coordinator` and of `coordinator status`
(coordinator/cli.py), their --help, and the check that README.md's option table says
the same (tests/test_cli.py). It imports nothing, so reading it costs nothing.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_TTL = 10.0
DEFAULT_GRACE = 3.0

RUN, STATUS = "run", "status"


class Option(NamedTuple):
    name: str  # the long option, also the keyword argument (dashes as underscores)
    kind: str  # "text", "seconds" (a float), "path", "switch" (--x/--no-x) or "flag"
    default: object
    help: str
    env: str = ""  # the environment variable that gives the value, if any
    short: str = ""
    metavar: str = ""
    shown: str = ""  # the default as README.md and --help write it, when not the value
    commands: tuple[str, ...] = (RUN,)

    @property
    def key(self) -> str:
        return self.name[2:].replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "--backend",
        "text",
        "file",
        "Where the lock lives: file (this host only, no server), redis, postgres, consul.",
        env="COORDINATOR_BACKEND",
        short="-b",
        metavar="NAME",
        commands=(RUN, STATUS),
    ),
    Option(
        "--url",
        "text",
        None,
        "Backend address. Defaults to the ecosystem's own variables (REDIS_URL; "
        "DATABASE_URL, then libpq's PG* variables; CONSUL_HTTP_ADDR) and for file to a "
        "per-user runtime directory.",
        env="COORDINATOR_URL",
        metavar="URL",
        shown="per backend",
        commands=(RUN, STATUS),
    ),
    Option(
        "--name",
        "text",
        None,
        "Lock name: one child runs per name. Default: derived from the command (program "
        "base name and arguments, plus a hash), so nodes running the same line share a "
        "lock and different commands never block each other.",
        env="COORDINATOR_NAME",
        short="-n",
        metavar="NAME",
        shown="from the command",
        commands=(RUN, STATUS),
    ),
    Option(
        "--ttl",
        "seconds",
        DEFAULT_TTL,
        "Lease time to live in seconds: a crashed holder is replaced after about this. "
        "Renewed every ttl/3. From 0.5 (consul: 2) to 1e9 (postgres: 98301, consul: "
        "2880); see docs/limits.md.",
        env="COORDINATOR_TTL",
        metavar="SECONDS",
    ),
    Option(
        "--grace",
        "seconds",
        DEFAULT_GRACE,
        "Seconds between SIGTERM and SIGKILL when stopping the child. Must leave time to "
        "renew: grace < ttl - ttl/3 - call timeout - margin.",
        env="COORDINATOR_GRACE",
        metavar="SECONDS",
    ),
    Option(
        "--node-id",
        "text",
        None,
        "This supervisor's identity in the lock. Default: hostname:pid.",
        env="COORDINATOR_NODE_ID",
        metavar="ID",
        shown="hostname:pid",
    ),
    Option(
        "--wait-timeout",
        "seconds",
        None,
        "Give up (exit 4) after waiting this many seconds for the lease; 0 makes one "
        "attempt. Default: wait forever.",
        env="COORDINATOR_WAIT_TIMEOUT",
        metavar="SECONDS",
        shown="forever",
    ),
    Option(
        "--safety-delay",
        "seconds",
        None,
        "Seconds to wait before starting the child when the backend reports that its lock "
        "state may have been lost (e.g. a Redis restart without persistence), so an "
        "unaware earlier holder has stopped. Default: the ttl. 0 disables.",
        env="COORDINATOR_SAFETY_DELAY",
        metavar="SECONDS",
        shown="the ttl",
    ),
    Option(
        "--key-prefix",
        "text",
        "coordinator/",
        "Prefix of the keys this program writes in the backend.",
        env="COORDINATOR_KEY_PREFIX",
        metavar="PREFIX",
        commands=(RUN, STATUS),
    ),
    Option(
        "--consul-node-check",
        "switch",
        False,
        "consul: tie the session to the agent's serfHealth check too. Off by default, so "
        "a gossip false positive cannot drop the lock.",
        env="COORDINATOR_CONSUL_NODE_CHECK",
        shown="off",
    ),
    Option(
        "--log-level",
        "text",
        "info",
        "debug, info, warning or error.",
        env="COORDINATOR_LOG_LEVEL",
        metavar="LEVEL",
    ),
    Option(
        "--log-format",
        "text",
        "text",
        "text (one sentence per line) or json (one object per line, for log shippers).",
        env="COORDINATOR_LOG_FORMAT",
        metavar="FORMAT",
    ),
    Option(
        "--metrics-address",
        "text",
        None,
        "Serve Prometheus metrics on /metrics and a health check on /healthz at this "
        "address (:PORT for every interface). Needs the metrics extra.",
        env="COORDINATOR_METRICS_ADDRESS",
        metavar="HOST:PORT",
        shown="off",
    ),
    Option(
        "--status-file",
        "path",
        None,
        "Keep a small JSON document with the current state at PATH, replaced atomically "
        "on each state change and renewal, for exec probes.",
        env="COORDINATOR_STATUS_FILE",
        metavar="PATH",
        shown="off",
    ),
    Option(
        "--json",
        "flag",
        False,
        "Print one JSON object, for scripts.",
        commands=(STATUS,),
    ),
    Option(
        "--timeout",
        "seconds",
        5.0,
        "Give up (exit 69) when the backend has not answered by then.",
        metavar="SECONDS",
        commands=(STATUS,),
    ),
)


def for_command(command: str) -> list[Option]:
    return [option for option in OPTIONS if command in option.commands]


def shown_default(option: Option) -> str:
    """The default as a person reads it: 10, not 10.0."""
    if option.shown:
        return option.shown
    if isinstance(option.default, float):
        return f"{option.default:g}"
    return str(option.default)
