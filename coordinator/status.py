"""`coordinator status`: who holds a lock, for people (text) and scripts (--json).

Exit status: 0 held, 1 free, 69 the backend could not tell (unreachable, timed out),
3 the backend refused our credentials, 2 usage error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from typing import Any

from coordinator import redact
from coordinator.backends import create_backend
from coordinator.backends.base import Backend, HolderInfo
from coordinator.config import Config
from coordinator.errors import EXIT_FREE, EXIT_HELD, BackendUnavailable
from coordinator.observe import escape, iso
from coordinator.output import emit


def ask(backend: Backend, name: str, timeout: float) -> HolderInfo | None:
    """backend.holder(name) with a hard timeout: a client library stuck in a DNS lookup
    or a TLS handshake must not hang a probe."""
    future: concurrent.futures.Future[HolderInfo | None] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(backend.holder(name))
        except BaseException as exc:  # re-raised in the caller's thread
            future.set_exception(exc)

    threading.Thread(target=run, name="status", daemon=True).start()
    try:
        return future.result(timeout=timeout)
    except concurrent.futures.TimeoutError as exc:  # not the builtin one before 3.11
        raise BackendUnavailable(f"no answer within {timeout:g}s") from exc


def describe(config: Config, where: str, holder: HolderInfo | None) -> dict[str, Any]:
    """The one JSON object `status --json` prints; None for what the backend cannot tell."""
    report: dict[str, Any] = {
        "name": config.name,
        "backend": config.backend,
        "where": where,
        "held": holder is not None,
        "node_id": None,
        "host": None,
        "pid": None,
        "since": None,
        "since_epoch": None,
        "fencing_token": None,
        "ttl_left": None,
    }
    if holder is not None:
        report.update(
            node_id=holder.node_id,
            host=holder.host or None,
            pid=holder.pid or None,
            since=iso(holder.since),
            since_epoch=holder.since or None,
            fencing_token=holder.fencing_token,
            ttl_left=None if holder.ttl_left is None else round(holder.ttl_left, 3),
        )
    return report


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s ago"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"


def render(report: dict[str, Any]) -> str:
    """Text for people: one headline, then one line per field the backend reported."""
    if not report["held"]:
        return f"{report['name']}: free ({report['where']})"
    lines = [
        f"{report['name']}: held by {report['node_id']}",
        f"  where:         {report['where']}",
    ]
    if report["host"]:
        lines.append(f"  host:          {report['host']}")
    if report["pid"]:
        lines.append(f"  pid:           {report['pid']}")
    if report["since"]:
        lines.append(
            f"  since:         {report['since']} ({ago(time.time() - report['since_epoch'])})"
        )
    if report["fencing_token"] is not None:
        lines.append(f"  fencing token: {report['fencing_token']}")
    if report["ttl_left"] is not None:
        lines.append(f"  ttl left:      {report['ttl_left']:.1f}s")
    return "\n".join(lines)


def status(config: Config, as_json: bool, timeout: float) -> int:
    backend = create_backend(config, observe_only=True)
    where = backend.describe(config.name)
    try:
        holder = ask(backend, config.name, timeout)
    except BackendUnavailable as exc:
        if as_json:
            report = describe(config, where, None) | {"held": None, "error": str(exc)}
            emit(json.dumps(redact.clean(report)))
        raise BackendUnavailable(f"cannot tell who holds {where}: {exc}") from exc
    with contextlib.suppress(Exception):  # best effort: the answer is already in
        backend.close()
    report = describe(config, where, holder)
    # Every value is redacted: a lock name or a node id is whatever the user or another
    # node wrote. Text shows control characters escaped, one field per line.
    report = redact.clean(report)
    if as_json:
        emit(json.dumps(report))
    else:
        emit(render({key: escape(v) if isinstance(v, str) else v for key, v in report.items()}))
    return EXIT_HELD if holder is not None else EXIT_FREE
