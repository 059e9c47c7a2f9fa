"""The embedded default: an exclusive flock(2) on a file, for one host.

The kernel drops the lock the instant its holder dies, so takeover after a crash is
immediate. The lock file is never unlinked (unlinking a locked file lets a second
process lock a new file at the same path); the holder checks at every renewal that
the file it locked is still the one at the path. Not for NFS or other network file
systems, whose lock semantics differ.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

from coordinator.backends.base import Backend, HolderInfo, Lease, json_object
from coordinator.config import Config, redact_url
from coordinator.errors import BackendUnavailable, ConfigError, LeaseLost

POLL_INTERVAL = 0.05  # standby probe period: one local syscall, no server involved


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
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


class FileBackend(Backend):
    name = "file"

    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory = directory
        self.ttl = ttl
        self._held: dict[str, int] = {}  # lease token -> locked fd
        self._prepare_directory()

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.directory)
        except OSError as exc:
            raise ConfigError(f"cannot use lock directory {self.directory}: {exc}") from exc
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"lock directory {self.directory} is not a directory")
        if str(self.directory).startswith("/tmp/") and info.st_uid != os.geteuid():
            # Someone else created our per-user directory in /tmp: do not trust it.
            raise ConfigError(f"lock directory {self.directory} belongs to another user")

    def _paths(self, name: str) -> tuple[Path, Path]:
        stem = file_stem(name)
        return self.directory / f"{stem}.lock", self.directory / f"{stem}.fence"

    def describe(self, name: str) -> str:
        return str(self._paths(name)[0])

    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        sent = time.monotonic()
        lock_path, fence_path = self._paths(name)
        try:
            fence_existed = fence_path.exists()
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
                created = False
        except OSError as exc:
            raise BackendUnavailable(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if not self._still_at_path(fd, lock_path):
                os.close(fd)  # unlinked between open and flock: look again next time
                return None
            fencing = self._next_fencing_token(fence_path)
            record = info.as_dict() | {"fencing_token": fencing}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise BackendUnavailable(f"cannot write lock file {lock_path}: {exc}") from exc
        token = secrets.token_hex(16)
        self._held[token] = fd
        # A fresh lock file beside an existing counter means the lock file was removed
        # while someone may still have held it: its holder may not have noticed yet.
        reset = "the lock file had been removed" if created and fence_existed else ""
        return Lease(name, token, fencing, sent + self.ttl, state_reset=reset)

    @staticmethod
    def _still_at_path(fd: int, path: Path) -> bool:
        try:
            held, current = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            return False
        return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)

    @staticmethod
    def _next_fencing_token(fence_path: Path) -> int:
        # Called with the lock held. A missing counter starts from the wall clock in
        # milliseconds, so tokens keep increasing even if the counter file is removed.
        try:
            last = int(fence_path.read_text().strip() or 0)
        except FileNotFoundError:
            last = 0
        except ValueError:
            last = 0
        token = max(last + 1, time.time_ns() // 1_000_000)
        tmp = fence_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f"{token}\n")
        os.replace(tmp, fence_path)
        return token

    def renew(self, lease: Lease) -> Lease:
        sent = time.monotonic()
        fd = self._held.get(lease.token)
        if fd is None:
            raise LeaseLost("this lease was already released")
        lock_path, _ = self._paths(lease.name)
        if not self._still_at_path(fd, lock_path):
            raise LeaseLost(f"lock file {lock_path} was removed or replaced")
        return Lease(lease.name, lease.token, lease.fencing_token, sent + self.ttl)

    def release(self, lease: Lease) -> None:
        fd = self._held.pop(lease.token, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def _peek(self, name: str) -> bytes | None:
        """The lock file's content while someone holds it; None when it is free."""
        lock_path, _ = self._paths(name)
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendUnavailable(f"cannot open lock file {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 65536, 0)
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


def create(config: Config) -> Backend:
    return FileBackend(directory_from_url(config.url), config.ttl)
