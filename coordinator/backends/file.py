"""The embedded default: an exclusive flock(2) on a file, for one host.

The kernel drops the lock the instant its holder dies, so takeover after a crash is
immediate. The lock file is never unlinked (unlinking a locked file lets a second
process lock a new file at the same path); the holder checks at every renewal that
the file it locked is still the one at the path. Not for NFS or other network file
systems, whose lock semantics differ.

Another local user must not be able to turn our writes against a file of their
choosing. The directory is opened once and every file is reached relative to it with
O_NOFOLLOW; a file is used only if it is a regular file with one link; new files and
the counter's temporary files are created with O_EXCL under unpredictable names. The
directory must belong to this user or root, and may be writable by others only
through its group (how users share one) or with the sticky bit (as /run/lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import time
from pathlib import Path

from coordinator.backends.base import Backend, HolderInfo, Lease, json_object
from coordinator.config import Config, redact_url
from coordinator.errors import BackendUnavailable, ConfigError, LeaseLost
from coordinator.hashing import sha256

POLL_INTERVAL = 0.05  # standby probe period: one local syscall, no server involved
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def check_directory(directory: Path, info: os.stat_result) -> None:
    """Refuse a directory in which another user could swap our files."""
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"lock directory {directory} is not a directory")
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"lock directory {directory} belongs to another user (uid {info.st_uid}): use a "
            "directory owned by this user or by root (docs/backends/file.md: sharing)"
        )
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"lock directory {directory} is writable by every user without the sticky bit: "
            "anyone could replace the lock files"
        )


def regular_file(fd: int, path: Path) -> None:
    """The file behind `fd` must be a plain file with one name: not a device, a FIFO,
    or a hard link to a file elsewhere."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        raise OSError(f"{path} is not a regular file with a single link: refusing to use it")


def runtime_dir() -> Path:
    """Per-user directory for lock files: $XDG_RUNTIME_DIR/coordinator, /run/coordinator
    for root, else /tmp/coordinator-UID."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "coordinator"
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return Path("/run/coordinator")
    return Path(f"/tmp/coordinator-{os.geteuid()}")


def directory_from_url(url: str | None) -> Path:
    if not url:
        return runtime_dir()
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path.startswith("/"):
            raise ConfigError(
                f"file URL must be absolute, like file:///var/lock/app: {redact_url(url)!r}"
            )
        return Path(path)
    if "://" in url:
        raise ConfigError(
            f"the file backend takes a directory or file:///dir URL, got {redact_url(url)!r}"
        )
    return Path(url).expanduser()


def file_stem(name: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) and not name.startswith("."):
        return name
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60]
    return f"{readable}-{sha256(name.encode()).hexdigest()[:16]}"


class FileBackend(Backend):
    name = "file"

    def __init__(self, directory: Path, ttl: float, create_directory: bool = True) -> None:
        self.directory = directory
        self.ttl = ttl
        self._held: dict[str, int] = {}  # lease token -> locked fd
        self._dir_fd = self._open_directory(create_directory)

    def _open_directory(self, create: bool) -> int | None:
        """The directory's fd, every file is opened relative to; None when it does not
        exist and `create` is false (status: nothing can be held there)."""
        try:
            if create:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            link = os.lstat(self.directory)
            if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.geteuid(), 0):
                raise ConfigError(
                    f"lock directory {self.directory} is a symbolic link owned by another "
                    f"user (uid {link.st_uid})"
                )
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            if create:
                raise ConfigError(f"cannot use lock directory {self.directory}: {exc}") from exc
            return None
        except OSError as exc:
            raise ConfigError(f"cannot use lock directory {self.directory}: {exc}") from exc
        try:
            check_directory(self.directory, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    @property
    def _dir(self) -> int:
        if self._dir_fd is None:
            raise BackendUnavailable(f"lock directory {self.directory} does not exist")
        return self._dir_fd

    def _file_mode(self) -> int:
        """0600, or 0660 in a directory shared through its group (mode g+w)."""
        shared = os.fstat(self._dir).st_mode & stat.S_IWGRP
        return 0o660 if shared else 0o600

    def _names(self, name: str) -> tuple[str, str]:
        stem = file_stem(name)
        return f"{stem}.lock", f"{stem}.fence"

    def describe(self, name: str) -> str:
        return str(self.directory / self._names(name)[0])

    def _open_lock(self, lock_name: str) -> tuple[int, bool]:
        """The lock file, opened for writing; created (O_EXCL) if missing."""
        try:
            fd = os.open(
                lock_name, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=self._dir
            )
            os.fchmod(fd, self._file_mode())
            return fd, True
        except FileExistsError:
            return os.open(lock_name, os.O_RDWR | NOFOLLOW, dir_fd=self._dir), False

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        sent = time.monotonic()
        lock_name, fence_name = self._names(name)
        lock_path = self.directory / lock_name
        try:
            fence_existed = self._exists(fence_name)
            fd, created = self._open_lock(lock_name)
        except OSError as exc:
            raise BackendUnavailable(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            regular_file(fd, lock_path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if not self._still_at_path(fd, lock_name):
                os.close(fd)  # unlinked between open and flock: look again next time
                return None
            fencing = self._next_fencing_token(fence_name)
            record = info.as_dict() | {"fencing_token": fencing}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise BackendUnavailable(f"cannot write lock file {lock_path}: {exc}") from exc
        token = os.urandom(16).hex()
        self._held[token] = fd
        # A fresh lock file beside an existing counter means the lock file was removed
        # while someone may still have held it: its holder may not have noticed yet.
        reset = "the lock file had been removed" if created and fence_existed else ""
        return Lease(name, token, fencing, sent + self.ttl, state_reset=reset)

    def _exists(self, file_name: str) -> bool:
        try:
            os.stat(file_name, dir_fd=self._dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _still_at_path(self, fd: int, file_name: str) -> bool:
        try:
            held = os.fstat(fd)
            current = os.stat(file_name, dir_fd=self._dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)

    def _read_counter(self, fence_name: str) -> int:
        try:
            fd = os.open(fence_name, os.O_RDONLY | NOFOLLOW, dir_fd=self._dir)
        except FileNotFoundError:
            return 0
        try:
            regular_file(fd, self.directory / fence_name)
            return int(os.read(fd, 64).strip() or 0)
        except ValueError:
            return 0
        finally:
            os.close(fd)

    def _next_fencing_token(self, fence_name: str) -> int:
        # Called with the lock held. A missing counter starts from the wall clock in
        # milliseconds, so tokens keep increasing even if the counter file is removed.
        token = max(self._read_counter(fence_name) + 1, time.time_ns() // 1_000_000)
        # A new file under a name nobody can guess, then renamed over the counter:
        # readers never see half a number, and nothing planted is written through.
        tmp = f".{fence_name}.{os.urandom(8).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=self._dir)
        try:
            os.fchmod(fd, self._file_mode())
            os.write(fd, f"{token}\n".encode())
            os.close(fd)
            os.replace(tmp, fence_name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._dir)
            raise
        return token

    def renew(self, lease: Lease) -> Lease:
        sent = time.monotonic()
        fd = self._held.get(lease.token)
        if fd is None:
            raise LeaseLost("this lease was already released")
        lock_name, _ = self._names(lease.name)
        if not self._still_at_path(fd, lock_name):
            raise LeaseLost(f"lock file {self.directory / lock_name} was removed or replaced")
        return Lease(lease.name, lease.token, lease.fencing_token, sent + self.ttl)

    def release(self, lease: Lease) -> None:
        fd = self._held.pop(lease.token, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def forget(self, lease: Lease) -> None:
        fd = self._held.pop(lease.token, None)
        if fd is not None:
            os.close(fd)  # the lock on a file that is no longer at the path

    def _peek(self, name: str) -> bytes | None:
        """The lock file's content while someone holds it; None when it is free."""
        lock_name, _ = self._names(name)
        if self._dir_fd is None:
            return None  # no directory, no lock
        try:
            fd = os.open(lock_name, os.O_RDONLY | NOFOLLOW, dir_fd=self._dir)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot open lock file {self.directory / lock_name}: {exc}"
            ) from exc
        try:
            regular_file(fd, self.directory / lock_name)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 65536, 0)
        except OSError as exc:
            raise BackendUnavailable(str(exc)) from exc
        finally:
            os.close(fd)

    def holder(self, name: str) -> HolderInfo | None:
        text = self._peek(name)
        if text is None:
            return None
        data = json_object(text)
        return HolderInfo.from_dict(data, fencing_token=data.get("fencing_token"))

    def wait(self, name: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._peek(name) is None:
                return
            time.sleep(min(POLL_INTERVAL, max(0.0, end - time.monotonic())))

    def close(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def create(config: Config) -> Backend:
    return FileBackend(directory_from_url(config.url), config.ttl)


def create_observer(config: Config) -> Backend:
    """For `status`: looks, and creates nothing (a missing directory holds no lock)."""
    return FileBackend(directory_from_url(config.url), config.ttl, create_directory=False)
