"""File: <stem>.celery.json beside the lock file, replaced atomically (a temporary file
created with O_EXCL | O_NOFOLLOW, fsync, rename, fsync of the directory). Reads open
with O_NOFOLLOW: a symlink planted at either path is refused, never followed. A
read-check-write holds flock on <stem>.celery.mutex (never the lock file itself: its
flock is the supervisor's lease), so a stale beat on the same host cannot interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

from coordinator.backends.file import FileBackend, file_stem
from coordinator.celery.store import (
    ABSENT,
    Conflict,
    EntryState,
    Fenced,
    Snapshot,
    Store,
    decode,
    encode,
)
from coordinator.errors import BackendUnavailable

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class FileStore(Store):
    def __init__(self, backend: Any, name: str, prefix: str) -> None:
        super().__init__(backend, name, prefix)
        assert isinstance(backend, FileBackend)
        stem = file_stem(name)  # the lock file's own stem: the state sits beside it
        self.directory = backend.directory
        self.path = self.directory / f"{stem}.celery.json"
        self.mutex = self.directory / f"{stem}.celery.mutex"

    def describe(self) -> str:
        return str(self.path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.mutex, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)
        except OSError as exc:
            raise BackendUnavailable(f"cannot open {self.mutex}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> Snapshot:
        try:
            fd = os.open(self.path, os.O_RDONLY | NOFOLLOW)
        except FileNotFoundError:
            return Snapshot(0, {}, ABSENT)
        except OSError as exc:
            raise BackendUnavailable(f"cannot open {self.path}: {exc}") from exc
        with os.fdopen(fd, "rb") as f:
            text = f.read()
        try:
            version = str(json.loads(text).get("version", 0))
        except (ValueError, AttributeError):
            version = "0"
        return decode(text, version)

    def read(self) -> Snapshot:
        with self._locked():
            return self._read()

    def write(self, token: int, entries: dict[str, EntryState], version: str) -> str:
        with self._locked():
            current = self._read()
            if current.fence > token:
                raise Fenced(current.fence)
            if current.version != version:
                raise Conflict()
            new = str(int(version or 0) + 1)
            document = json.loads(encode(token, entries)) | {"version": int(new)}
            self._replace(json.dumps(document, separators=(",", ":")).encode())
            return new

    def _replace(self, data: bytes) -> None:
        tmp = self.directory / f".{self.path.name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BackendUnavailable(f"cannot write {self.path}: {exc}") from exc
