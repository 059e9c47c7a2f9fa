"""The backend contract: every call answers yes, a definite no, or "cannot tell".

- yes: a Lease (acquire, renew), or None from holder() when nobody holds the lock;
- definite no: acquire returns None; renew raises LeaseLost;
- cannot tell: BackendUnavailable. Never read as a yes.

Backends measure lease deadlines on the local monotonic clock from the moment a request
was sent, never from when the reply arrived nor from the backend's clock.
"""

from __future__ import annotations

import abc
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HolderInfo:
    """Who holds (or wants) a lease; stored beside the lock for `status` and logs."""

    node_id: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    since: float = field(default_factory=time.time)  # wall clock, for display only
    fencing_token: int | None = None
    ttl_left: float | None = None  # seconds, as the backend reported it

    def as_dict(self) -> dict[str, Any]:
        """What is stored beside the lock (the fencing token and ttl are the backend's)."""
        return {"node_id": self.node_id, "host": self.host, "pid": self.pid, "since": self.since}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, **extra: Any) -> HolderInfo:
        return cls.from_dict(json_object(text), **extra)

    @classmethod
    def from_dict(cls, data: object, **extra: Any) -> HolderInfo:
        if not isinstance(data, dict):
            data = {}
        try:
            return cls(
                node_id=str(data["node_id"]),
                host=str(data.get("host", "")),
                pid=int(data.get("pid", 0)),
                since=float(data.get("since", 0.0)),
                **extra,
            )
        except (ValueError, KeyError, TypeError):
            # A value written by something else: still held, just not described.
            return cls(node_id="unknown", host="", pid=0, since=0.0, **extra)


def json_object(text: str | bytes) -> dict[str, Any]:
    """The JSON object in `text`, or {} for anything else."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Lease:
    name: str
    token: str  # owner token: proves ownership in compare-and-set calls
    fencing_token: int  # strictly increasing per name across acquisitions
    deadline: float  # time.monotonic() after which the lease may be someone else's
    # Non-empty when the backend cannot rule out that an earlier holder lost its lock
    # while still running (the lock state was lost); it says why. The supervisor then
    # waits its safety delay before starting the child.
    state_reset: str = ""
    # False while the backend cannot yet tell newcomers that a child runs under this
    # lease (postgres: an earlier holder's "child running" beacon is still taken). The
    # supervisor keeps renewing, and starts the child only once it is True.
    ready: bool = True
    # Seconds to wait after acquiring before starting the child, and why: the backend
    # cannot tell that the previous holder let go on purpose, and a holder that lost
    # its lock kills its child at once (LeaseLost.stop_now), within this time.
    hold_off: float = 0.0
    hold_off_reason: str = ""


class Backend(abc.ABC):
    """One lock store. Calls may block for at most the timeout given at construction."""

    #: Name used with --backend.
    name: str = ""

    @abc.abstractmethod
    def acquire(self, name: str, info: HolderInfo) -> Lease | None:
        """One non-blocking attempt. None means someone else holds the lock."""

    @abc.abstractmethod
    def renew(self, lease: Lease) -> Lease:
        """Extend the lease; the new deadline counts from when the request was sent."""

    @abc.abstractmethod
    def release(self, lease: Lease) -> None:
        """Compare-and-delete by token, and wake the standbys. Safe to repeat."""

    def forget(self, lease: Lease) -> None:  # noqa: B027 - optional hook
        """Drop what was kept for a lease found lost, once its child is reaped (a lost
        lease is not ours to release: someone else may hold the lock now)."""

    def refused_by(self, name: str) -> HolderInfo | None:
        """Who holds the lock, asked right after acquire() said no. Backends whose
        acquire just read the holder answer from that, without another request."""
        return self.holder(name)

    @abc.abstractmethod
    def holder(self, name: str) -> HolderInfo | None:
        """Who holds the lock now, or None when it is free."""

    def wait(self, name: str, timeout: float) -> None:
        """Block until the lock may be free, at most `timeout` seconds."""
        time.sleep(max(0.0, timeout))

    def watch_fd(self) -> int | None:
        """A socket that turns readable when the server may have dropped our lock
        (it closed the connection or sent an error). The supervisor renews at once
        when it does, instead of waiting for the next renewal."""
        return None

    def describe(self, name: str) -> str:
        """Where the lock lives, for logs (never with a password)."""
        return name

    def close(self) -> None:  # noqa: B027 - optional hook, most backends have state to drop
        """Release connections. Does not release leases."""
