"""Command line: parsing only. Outcomes map to exit codes listed in docs/exit-codes.md.

The options come from one table (coordinator/options.py) and are parsed by click. Only
what parsing needs is imported here: the supervisor, the backend and its client library
are imported once the command line is known to be good.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from coordinator import __version__, limits, options, redact
from coordinator.config import Config
from coordinator.errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    ConfigError,
    CoordinatorError,
    OutputGone,
)
from coordinator.output import emit

if TYPE_CHECKING:
    from coordinator.observe import Tracker


EPILOG_RUN = (
    "Everything after '--' (or after the first word that is not an option) is the "
    "command and its arguments, passed to it unchanged. Exit status: the command's own; "
    "128+N if it died of signal N; 2 usage error; 3 backend refused our credentials; "
    "4 --wait-timeout passed; 126/127 command not executable/not found. "
    "Who holds a lock: coordinator status --help."
)
EPILOG_STATUS = (
    "Exit status: 0 held; 1 free; 2 usage error; 3 the backend refused our "
    "credentials; 69 the backend could not tell (unreachable or no answer in time); "
    "74 the answer could not be written (141: its reader went away). "
    "A command that is itself called 'status' runs with: coordinator -- status."
)


def _parameter(option: options.Option) -> click.Option:
    """A click option from a row of the table."""
    decls = [option.name, *([option.short] if option.short else [])]
    extra: dict[str, Any] = {}
    if option.kind == "switch":
        decls = [f"{option.name}/--no-{option.name[2:]}"]
        extra["is_flag"] = True
    elif option.kind == "flag":
        extra["is_flag"] = True
    elif option.kind == "seconds":
        extra["type"] = click.FLOAT
    elif option.kind == "path":
        extra["type"] = click.Path(dir_okay=False, path_type=Path)
    return click.Option(
        decls,
        default=option.default,
        envvar=option.env or None,
        show_envvar=bool(option.env),
        show_default=option.default is not None and option.kind != "flag",
        metavar=option.metavar or None,
        help=option.help,
        **extra,
    )


def _version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        emit(f"coordinator {__version__}")
        ctx.exit()


def _help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        emit(ctx.get_help())
        ctx.exit()


class _Command(click.Command):
    """click's command, with --help written like every other answer (coordinator.output):
    click's own turns a closed pipe into exit 1, which from `status` means "free"."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.callback = _help
        return option


def _completion(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from coordinator import completion

        assert ctx.command is not None and param.name is not None
        completion.act(ctx.command, param.name)
        ctx.exit()


def _eager(name: str, help: str, callback: Any) -> click.Option:
    return click.Option(
        [name], is_flag=True, expose_value=False, is_eager=True, callback=callback, help=help
    )


def build(command: str) -> click.Command:
    """The click command for `coordinator` (RUN) or `coordinator status`, from the table."""
    params: list[click.Parameter] = [
        click.Argument(["command"], nargs=-1, metavar="[-- COMMAND [ARGS]...]"),
        *(_parameter(option) for option in options.for_command(command)),
    ]
    if command == options.RUN:
        params += [
            _eager("--version", "Show the version.", _version),
            _eager(
                "--install-completion", "Install completion for the current shell.", _completion
            ),
            _eager(
                "--show-completion",
                "Show completion for the current shell, to copy it or customize the installation.",
                _completion,
            ),
        ]
        return _Command(
            "coordinator",
            callback=run,
            params=params,
            help="Run COMMAND on exactly one node at a time; the others wait as hot standbys.",
            epilog=EPILOG_RUN,
            context_settings={
                "allow_interspersed_args": False,
                "help_option_names": ["-h", "--help"],
            },
        )
    return _Command(
        "status",
        callback=status,
        params=params,
        help="Show who holds the lock NAME: node id, host, pid, since when, fencing token, "
        "time left.",
        epilog=EPILOG_STATUS,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


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


def run(
    command: tuple[str, ...],
    backend: str,
    url: str | None,
    name: str | None,
    ttl: float,
    grace: float,
    node_id: str | None,
    wait_timeout: float | None,
    safety_delay: float | None,
    key_prefix: str,
    consul_node_check: bool,
    log_level: str,
    log_format: str,
    metrics_address: str | None,
    status_file: Path | None,
) -> int:
    """Run COMMAND on exactly one node at a time; the others wait as hot standbys."""
    from coordinator import observe, watchdog
    from coordinator.backends import create_backend
    from coordinator.child import resolve
    from coordinator.supervisor import Supervisor

    redact.register_url(url)
    redact.register_command(command)

    kwargs: dict[str, object] = {}
    if node_id:
        kwargs["node_id"] = node_id
    config = Config(
        command=tuple(command),
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


def status(
    command: tuple[str, ...],
    backend: str,
    url: str | None,
    name: str | None,
    key_prefix: str,
    json: bool,
    timeout: float,
) -> int:
    """Show who holds the lock NAME."""
    from coordinator.status import status as show

    redact.register_url(url)
    redact.register_command(command)
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
    return show(config, json, timeout)


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
        out = json.dumps(line, ensure_ascii=False) + "\n"
    else:
        out = f"coordinator: error: {escape(text)}\n"
    # A closed or full stderr (2>&-) loses the line, not the exit code.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(out)
        sys.stderr.flush()
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
    which, prog = options.RUN, "coordinator"
    if args[:1] == ["status"]:
        which, prog, args = options.STATUS, "coordinator status", args[1:]
    command = build(which)
    try:
        if which == options.RUN and os.environ.get("_COORDINATOR_COMPLETE"):
            from coordinator import completion

            sys.exit(completion.complete(command, os.environ["_COORDINATOR_COMPLETE"]))
        code = command.main(args=args, prog_name=prog, standalone_mode=False)
    except OutputGone as exc:
        sys.exit(exc.exit_code)  # silent, as a program killed by SIGPIPE
    except CoordinatorError as exc:
        fail(str(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        fail("aborted", 128 + 2)
    except click.exceptions.NoSuchOption as exc:
        # The wording of earlier versions, which scripts may look for.
        near = ", ".join(sorted(exc.possibilities or ()))
        near = f" (Possible options: {near})" if near else ""
        fail(f"No such option: {exc.option_name}{near} (see {prog} --help)", EXIT_USAGE)
    except click.exceptions.ClickException as exc:
        fail(f"{exc.format_message()} (see {prog} --help)", EXIT_USAGE)
    except Exception as exc:
        # A bug: say what, without a traceback that may hold secrets.
        fail(f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


def entry() -> NoReturn:
    """The program: main(), then out at once. By the time main() is done the child is
    reaped, the lease released, the backend closed and every line written; tearing
    down the interpreter's modules (some 300 with a client library) would only add
    tens of milliseconds to every exit, to free memory the kernel frees anyway. The
    atexit functions still run, and the output is flushed."""
    try:
        main()
    except SystemExit as exc:
        run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
        if not isinstance(exc.code, int) or run_exit_functions is None:
            raise
        run_exit_functions()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(exc.code)
