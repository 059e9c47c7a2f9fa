"""The few errors the program distinguishes, and the exit codes they map to."""

from __future__ import annotations

# Exit codes of the program itself. The child's own code (0-255) and 128+N for a
# child killed by signal N pass through unchanged; see docs/exit-codes.md.
EXIT_HELD = 0  # status: the lock is held
EXIT_FREE = 1  # status: the lock is free
EXIT_USAGE = 2  # bad option, missing command, inconsistent timings, bad URL
EXIT_BACKEND_REJECTED = 3  # the backend refused us for good: credentials, permissions
EXIT_WAIT_TIMEOUT = 4  # --wait-timeout passed without acquiring the lease
EXIT_UNAVAILABLE = 69  # status: the backend could not tell (EX_UNAVAILABLE)
EXIT_INTERNAL = 70  # a bug: an unexpected exception (EX_SOFTWARE)
EXIT_OUTPUT = 74  # the answer could not be written to stdout (EX_IOERR)
EXIT_NOT_EXECUTABLE = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127  # the command was not found
EXIT_OUTPUT_GONE = 141  # 128 + SIGPIPE: the reader of stdout went away


class CoordinatorError(Exception):
    """Base class; the message is one line meant for the operator."""

    exit_code = EXIT_INTERNAL


class ConfigError(CoordinatorError):
    """The configuration cannot work (bad option, URL or timing)."""

    exit_code = EXIT_USAGE


class MissingDependency(ConfigError):
    """The client library of the chosen backend is not installed."""


class BackendUnavailable(CoordinatorError):
    """The backend cannot tell: unreachable, timed out, or an unclear answer.

    Never read as a yes. Callers retry with backoff; a holder self-fences by its deadline.
    Only `status` exits with it: the supervisor keeps trying.
    """

    exit_code = EXIT_UNAVAILABLE


class BackendRejected(CoordinatorError):
    """The backend answered, and will keep answering, no: wrong password, no permission."""

    exit_code = EXIT_BACKEND_REJECTED


class LeaseLost(CoordinatorError):
    """A definite answer that the lease is no longer ours.

    stop_now: another node may start its child after only a short hold-off (the lock
    went with every session of ours), so the child gets SIGKILL at once, not a grace.
    """

    def __init__(self, message: str, stop_now: bool = False) -> None:
        super().__init__(message)
        self.stop_now = stop_now


class OutputError(CoordinatorError):
    """The answer (status, --help, --version, completion) could not be written to
    stdout: a full disk, an I/O error."""

    exit_code = EXIT_OUTPUT


class OutputGone(OutputError):
    """The reader of stdout went away (`coordinator status | head -0`): no line, and
    the code of a program killed by SIGPIPE, never the code of an answer."""

    exit_code = EXIT_OUTPUT_GONE
