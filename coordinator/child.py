"""The child: started in its own process group, tied to its supervisor's life.

The child gets a parent-death signal (PR_SET_PDEATHSIG, SIGKILL) set between fork and
exec, so a supervisor killed with SIGKILL takes its child with it. The signal fires
when the *thread* that forked exits, so the child is always started from the main
thread. SIGKILL rather than SIGTERM because a dead supervisor no longer renews the
lease: the child must be gone before another node can take over.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from coordinator.errors import EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, CoordinatorError

PR_SET_PDEATHSIG = 1

# The process's own symbols, libc's among them: ctypes.util.find_library would import
# tempfile, shutil and the compression modules to find the same library.
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


class ChildStartError(CoordinatorError):
    """The command could not be executed."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve(program: str, env: Mapping[str, str]) -> str:
    """The file the shell would execute for `program`, checked before contending so a
    standby with a typo fails at once rather than at its first takeover.

    As the shell: a name with a slash is used as is, any other is looked up in PATH
    (the child's, else the system default), skipping directories and files without
    execute permission. Raises ChildStartError with 127 (not found) or 126 (found,
    not executable). Child() checks again at exec time: a file can vanish meanwhile.
    """
    if not program:
        raise ChildStartError("command not found: '' (an empty program name)", EXIT_NOT_FOUND)
    if "/" in program:
        candidates = [program]
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(entry or ".", program) for entry in path.split(os.pathsep)]
    denied = ""
    for candidate in candidates:
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode):
            if "/" in program:  # the shell skips directories in a PATH lookup
                denied = f"command not executable: {program}: is a directory"
        elif not os.access(candidate, os.X_OK):
            denied = denied or f"command not executable: {program}: permission denied"
        else:
            return candidate
    if denied:
        raise ChildStartError(denied, EXIT_NOT_EXECUTABLE)
    where = "" if "/" in program else " in PATH"
    raise ChildStartError(f"command not found{where}: {program}", EXIT_NOT_FOUND)


def _make_preexec(supervisor_pid: int) -> Callable[[], None]:
    def preexec() -> None:
        # Runs in the forked child, before exec: only async-signal-safe work.
        os.setpgid(0, 0)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor_pid:
            # The supervisor died before prctl took effect: nobody would kill us.
            os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())

    return preexec


def exit_code(returncode: int) -> int:
    """Shell convention: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Child:
    """One running command. All methods are called from the supervisor's main thread."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the child must be forked from the main thread")
        try:
            self.process = subprocess.Popen(
                list(argv),
                env=dict(env),
                preexec_fn=_make_preexec(os.getpid()),
                close_fds=True,  # no lock file descriptor or socket leaks into the child
                restore_signals=True,
            )
        except FileNotFoundError as exc:
            raise ChildStartError(f"command not found: {argv[0]}", EXIT_NOT_FOUND) from exc
        except PermissionError as exc:
            raise ChildStartError(
                f"command not executable: {argv[0]}: {exc.strerror}", EXIT_NOT_EXECUTABLE
            ) from exc
        except OSError as exc:
            raise ChildStartError(
                f"cannot start {argv[0]}: {exc.strerror}", EXIT_NOT_EXECUTABLE
            ) from exc
        self.pid = self.process.pid

    def poll(self) -> int | None:
        """The exit code once the child has been reaped, else None."""
        code = self.process.poll()
        return None if code is None else exit_code(code)

    def stopped_by(self) -> int | None:
        """The signal that stopped the child (SIGTTIN, SIGSTOP, ...) if it stopped since
        the last call, else None. Does not reap it: poll() still sees its exit."""
        if self.process.returncode is not None:
            return None
        try:
            info = os.waitid(os.P_PID, self.pid, os.WSTOPPED | os.WNOHANG)
        except ChildProcessError:  # reaped meanwhile
            return None
        if info is None or info.si_code != os.CLD_STOPPED:
            return None
        return int(info.si_status)

    def signal(self, signum: int) -> None:
        """Forward a signal to the command itself."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def signal_group(self, signum: int) -> None:
        """Signal the child's whole process group; it may already be gone."""
        # ESRCH: the group is gone. EPERM: only zombies are left in it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def kill_stragglers(self, timeout: float = 5.0) -> bool:
        """After the child is reaped, kill what is left of its process group and wait
        until none of it is alive: a dying process still runs and holds its files and
        locks, so the lease must not be released before. False if some survived
        `timeout` (uninterruptible sleep)."""
        end = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return True  # the common case: nothing left, not even a zombie
            except PermissionError:
                pass
            if not group_members(self.pid):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.005)


def stat_fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:  # gone, or going while we read
        return None


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def processes() -> Iterator[tuple[int, list[str]]]:
    """Every process with its stat fields, from /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(entry)) is not None:
            yield int(entry), fields


def group_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that are not zombies (a zombie holds nothing)."""
    return [pid for pid, fields in processes() if int(fields[2]) == pgid and fields[0] != "Z"]
