"""Command line: parsing only. Outcomes map to exit codes listed in docs/exit-codes.md."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from coordinator import __version__, limits, redact
from coordinator.config import DEFAULT_GRACE, DEFAULT_TTL, Config
from coordinator.errors import EXIT_INTERNAL, EXIT_USAGE, ConfigError, CoordinatorError

if TYPE_CHECKING:
    from coordinator.observe import Tracker


def _typer(completion: bool) -> typer.Typer:
    return typer.Typer(
        add_completion=completion,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


app = _typer(completion=True)


# Options of both `coordinator` and `coordinator status`.
BackendOption = Annotated[
    str,
    typer.Option(
        "--backend",
        "-b",
        metavar="NAME",
        envvar="COORDINATOR_BACKEND",
        show_envvar=True,
        help="Where the lock lives: file (this host only, no server), redis, postgres, consul.",
    ),
]

UrlOption = Annotated[
    str | None,
    typer.Option(
        metavar="URL",
        envvar="COORDINATOR_URL",
        show_envvar=True,
        help="Backend address. Defaults to the ecosystem's own variables (REDIS_URL; "
        "DATABASE_URL, then libpq's PG* variables; CONSUL_HTTP_ADDR) and for file to a "
        "per-user runtime directory.",
    ),
]

NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        "-n",
        metavar="NAME",
        envvar="COORDINATOR_NAME",
        show_envvar=True,
        help="Lock name: one child runs per name. Default: derived from the command "
        "(program base name and arguments, plus a hash), so nodes running the same line "
        "share a lock and different commands never block each other.",
    ),
]

KeyPrefixOption = Annotated[
    str,
    typer.Option(
        metavar="PREFIX",
        envvar="COORDINATOR_KEY_PREFIX",
        show_envvar=True,
        help="Prefix of the keys this program writes in the backend.",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"coordinator {__version__}")
        raise typer.Exit()


def setup_logging(
    level: str, json_for: Config | None = None, tracker: Tracker | None = None
) -> None:
    """Text lines on stderr, or JSON lines when `json_for` gives the config to describe.
    Either way every line goes through coordinator.redact first."""
    from coordinator import observe

    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(redact.LogFilter())
    if json_for is not None:
        handler.setFormatter(observe.JsonFormatter(json_for, tracker))
    else:
        handler.setFormatter(observe.TextFormatter())
    root = logging.getLogger("coordinator")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


@app.command(
    # A command's own settings replace the app's: repeat -h here.
    context_settings={"allow_interspersed_args": False, "help_option_names": ["-h", "--help"]},
    epilog="Everything after '--' (or after the first word that is not an option) is the "
    "command and its arguments, passed to it unchanged. Exit status: the command's own; "
    "128+N if it died of signal N; 2 usage error; 3 backend refused our credentials; "
    "4 --wait-timeout passed; 126/127 command not executable/not found. "
    "Who holds a lock: coordinator status --help.",
)
def run(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- COMMAND [ARGS]...", help="The command to run.", show_default=False
        ),
    ] = None,
    backend: BackendOption = "file",
    url: UrlOption = None,
    name: NameOption = None,
    ttl: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            envvar="COORDINATOR_TTL",
            show_envvar=True,
            help="Lease time to live in seconds: a crashed holder is replaced after about this. "
            "Renewed every ttl/3. From 0.5 (consul: 2) to 1e9 (postgres: 98301, consul: "
            "2880); see docs/limits.md.",
        ),
    ] = DEFAULT_TTL,
    grace: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            envvar="COORDINATOR_GRACE",
            show_envvar=True,
            help="Seconds between SIGTERM and SIGKILL when stopping the child. Must leave time "
            "to renew: grace < ttl - ttl/3 - call timeout - margin.",
        ),
    ] = DEFAULT_GRACE,
    node_id: Annotated[
        str | None,
        typer.Option(
            metavar="ID",
            envvar="COORDINATOR_NODE_ID",
            show_envvar=True,
            help="This supervisor's identity in the lock. Default: hostname:pid.",
        ),
    ] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            envvar="COORDINATOR_WAIT_TIMEOUT",
            show_envvar=True,
            help="Give up (exit 4) after waiting this many seconds for the lease; 0 makes "
            "one attempt. Default: wait forever.",
        ),
    ] = None,
    safety_delay: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            envvar="COORDINATOR_SAFETY_DELAY",
            show_envvar=True,
            help="Seconds to wait before starting the child when the backend reports that "
            "its lock state may have been lost (e.g. a Redis restart without persistence), "
            "so an unaware earlier holder has stopped. Default: the ttl. 0 disables.",
        ),
    ] = None,
    key_prefix: KeyPrefixOption = "coordinator/",
    consul_node_check: Annotated[
        bool,
        typer.Option(
            envvar="COORDINATOR_CONSUL_NODE_CHECK",
            show_envvar=True,
            help="consul: tie the session to the agent's serfHealth check too. Off by "
            "default, so a gossip false positive cannot drop the lock.",
        ),
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(
            metavar="LEVEL",
            envvar="COORDINATOR_LOG_LEVEL",
            show_envvar=True,
            help="debug, info, warning or error.",
        ),
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option(
            metavar="FORMAT",
            envvar="COORDINATOR_LOG_FORMAT",
            show_envvar=True,
            help="text (one sentence per line) or json (one object per line, for log shippers).",
        ),
    ] = "text",
    metrics_address: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            envvar="COORDINATOR_METRICS_ADDRESS",
            show_envvar=True,
            help="Serve Prometheus metrics on /metrics and a health check on /healthz at this "
            "address (:PORT for every interface). Needs the metrics extra.",
        ),
    ] = None,
    status_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            envvar="COORDINATOR_STATUS_FILE",
            show_envvar=True,
            dir_okay=False,
            help="Keep a small JSON document with the current state at PATH, replaced "
            "atomically on each state change and renewal, for exec probes.",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> int:
    """Run COMMAND on exactly one node at a time; the others wait as hot standbys."""
    from coordinator import observe, watchdog
    from coordinator.backends import create_backend
    from coordinator.child import resolve
    from coordinator.supervisor import Supervisor

    redact.register_url(url)

    kwargs: dict[str, object] = {}
    if node_id:
        kwargs["node_id"] = node_id
    config = Config(
        command=tuple(command or ()),
        backend=backend,
        url=url,
        name=name or "",
        ttl=ttl,
        grace=grace,
        wait_timeout=wait_timeout,
        safety_delay=safety_delay,
        key_prefix=key_prefix,
        log_level=log_level,
        consul_node_check=consul_node_check,
        **kwargs,  # type: ignore[arg-type]
    )
    if log_format not in observe.LOG_FORMATS:
        raise ConfigError(
            f"unknown log format {log_format!r} (choose from {', '.join(observe.LOG_FORMATS)})"
        )
    refuse_own_lock(config)
    json_for = config if log_format == "json" else None
    setup_logging(log_level, json_for)  # what creating the backend logs is redacted too
    watchdog.configure(log_format, config.name, config.node_id)
    # Before the backend is contacted: a typo fails now, not at this node's first takeover.
    resolve(config.command[0], os.environ)
    store = create_backend(config)
    tracker = observe.Tracker(config, status_file)
    setup_logging(log_level, json_for, tracker)
    observer = observe.start(config, tracker, metrics_address)
    return Supervisor(config, store, observer).run()


status_app = _typer(completion=False)


@status_app.command(
    epilog="Exit status: 0 held; 1 free; 2 usage error; 3 the backend refused our "
    "credentials; 69 the backend could not tell (unreachable or no answer in time). "
    "A command that is itself called 'status' runs with: coordinator -- status.",
)
def status(
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- COMMAND [ARGS]...",
            help="The command the supervisors run, to derive the lock name when --name is "
            "not given.",
            show_default=False,
        ),
    ] = None,
    backend: BackendOption = "file",
    url: UrlOption = None,
    name: NameOption = None,
    key_prefix: KeyPrefixOption = "coordinator/",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object, for scripts.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", help="Give up (exit 69) when the backend has not answered by then."
        ),
    ] = 5.0,
) -> int:
    """Show who holds the lock NAME: node id, host, pid, since when, fencing token,
    time left."""
    from coordinator.status import status as show

    redact.register_url(url)
    if not name and not command:
        raise ConfigError("status needs --name NAME, or after '--' the command the supervisors run")
    limits.seconds("--timeout", timeout, 0, limits.MAX_SECONDS, above=True)
    config = Config(
        # The command only derives the default name: status runs nothing.
        command=tuple(command or ("status",)),
        backend=backend,
        url=url,
        name=name or "",
        key_prefix=key_prefix,
    )
    return show(config, as_json, timeout)


def refuse_own_lock(config: Config) -> None:
    """A coordinator started as the child of one holding the same lock would wait for
    its own parent forever (the child inherits COORDINATOR_NAME and the backend)."""
    env = os.environ
    if (
        env.get("COORDINATOR_FENCING_TOKEN")
        and env.get("COORDINATOR_NAME") == config.name
        and env.get("COORDINATOR_BACKEND", config.backend) == config.backend
        and env.get("COORDINATOR_KEY_PREFIX", config.key_prefix) == config.key_prefix
    ):
        raise ConfigError(
            f"this runs as the child of a coordinator that holds {config.name!r}, and would "
            "wait for its own parent forever: give it another --name"
        )


def wants_json(args: list[str]) -> bool:
    """--log-format json on this command line (before '--') or in the environment."""
    chosen = os.environ.get("COORDINATOR_LOG_FORMAT", "text")
    for index, word in enumerate(args):
        if word == "--":
            break
        if word == "--log-format" and index + 1 < len(args):
            chosen = args[index + 1]
        elif word.startswith("--log-format="):
            chosen = word.split("=", 1)[1]
    return chosen == "json"


# Set by main(): the error line follows --log-format too.
_error_as_json = False


def fail(message: str, code: int) -> NoReturn:
    from coordinator.observe import escape, iso

    text = redact.redact(message)
    if _error_as_json:
        line = {
            "ts": iso(time.time()),
            "level": "error",
            "message": f"error: {text}",
            "pid": os.getpid(),
            "event": "error",
            "exit_code": code,
        }
        sys.stderr.write(json.dumps(line, ensure_ascii=False) + "\n")
    else:
        sys.stderr.write(f"coordinator: error: {escape(text)}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    # Before anything can fail: the secrets every output must hide.
    redact.register_environment()
    redact.register_arguments(args)
    global _error_as_json
    _error_as_json = args[:1] != ["status"] and wants_json(args)
    # `coordinator status ...` is the status command; anything else, `coordinator --
    # status` included, runs a command. A group would read the child's first word as a
    # subcommand name.
    target, prog = app, "coordinator"
    if args[:1] == ["status"]:
        target, prog, args = status_app, "coordinator status", args[1:]
    command = typer.main.get_command(target)
    try:
        code = command.main(args=args, prog_name=prog, standalone_mode=False)
    except CoordinatorError as exc:
        fail(str(exc), exc.exit_code)
    except Exception as exc:
        # Typer's parsing errors come from click or, in recent versions, its own copy
        # of click: recognise them by shape rather than by class.
        kind = type(exc).__name__
        if kind == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if kind == "Abort":
            fail("aborted", 128 + 2)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            fail(f"{exc.format_message()} (see {prog} --help)", EXIT_USAGE)
        # A bug: say what, without a traceback that may hold secrets.
        fail(f"internal error: {kind}: {exc}", EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)
