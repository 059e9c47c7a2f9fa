"""Prometheus metrics and /healthz on one small HTTP server (--metrics-address).

Imported only when that option is given: prometheus-client is an optional extra, and a
supervisor that does not serve metrics does not pay for importing it.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

from coordinator import __version__, redact
from coordinator.config import Config
from coordinator.errors import ConfigError
from coordinator.observe import REASONS, Observer, Tracker
from coordinator.states import State

STATES = [state.name.lower() for state in State] + ["stopped"]

# The *_created series only repeat the process start time here.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics(Observer):
    """Prometheus metrics fed by the supervisor's hooks, in a registry of their own."""

    def __init__(self, config: Config, tracker: Tracker) -> None:
        self.tracker = tracker
        self.registry = registry = CollectorRegistry()
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)
        Info("coordinator", "What this supervisor runs.", registry=registry).info(
            {
                "version": __version__,
                "name": config.name,
                "backend": config.backend,
                "node_id": config.node_id,
            }
        )
        self.leader = Gauge(
            "coordinator_leader", "1 while this node holds the lease, else 0.", registry=registry
        )
        self.state = Enum(
            "coordinator_state", "The supervisor's state.", states=STATES, registry=registry
        )
        self.transitions = Counter(
            "coordinator_transitions",
            "Times this node gained (reason=acquired) or stopped holding the lease, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in ("acquired", *REASONS):
            self.transitions.labels(reason)  # every series exists from the start, at 0
        self.renew_seconds = Histogram(
            "coordinator_renew_seconds",
            "Duration of successful renewals.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.renew_failures = Counter(
            "coordinator_renew_failures",
            "Renewals that got no clear answer and were retried.",
            registry=registry,
        )
        self.last_renew = Gauge(
            "coordinator_last_renew_timestamp_seconds",
            "Wall-clock time of the last successful acquisition or renewal (0: never).",
            registry=registry,
        )
        Gauge(
            "coordinator_seconds_since_last_renew",
            "Seconds since the last successful acquisition or renewal while holding the "
            "lease; NaN when not holding.",
            registry=registry,
        ).set_function(self._renew_age)
        self.fencing_token = Gauge(
            "coordinator_fencing_token",
            "Fencing token of the lease held now or last (0: never held).",
            registry=registry,
        )
        self.child_starts = Counter(
            "coordinator_child_starts", "Times the child was started.", registry=registry
        )
        self.client_errors = Counter(
            "coordinator_http_client_errors",
            "HTTP requests to /metrics or /healthz that failed on the client's side (hung up "
            "early, reset, timed out) or were refused for too many at once.",
            registry=registry,
        )
        self.state.state("starting")
        self._leading = False
        self.server: ThreadingHTTPServer | None = None  # set by serve()

    def _renew_age(self) -> float:
        now = self.tracker.current
        if not now.leader or now.last_renew_mono is None:
            return float("nan")
        return time.monotonic() - now.last_renew_mono

    def _stop_leading(self, reason: str) -> None:
        if self._leading:
            self._leading = False
            self.leader.set(0)
            self.transitions.labels(reason if reason in REASONS else "other").inc()

    def state_changed(self, state: str, reason: str = "") -> None:
        self.state.state(state if state in STATES else "starting")
        if state == "exited":
            self._stop_leading("child_exited")
        elif state in ("stopping", "contending"):
            self._stop_leading(reason)

    def acquired(self, fencing_token: int) -> None:
        self._leading = True
        self.leader.set(1)
        self.transitions.labels("acquired").inc()
        self.fencing_token.set(fencing_token)
        self.last_renew.set(time.time())

    def renewed(self, seconds: float) -> None:
        self.renew_seconds.observe(seconds)
        self.last_renew.set(time.time())

    def renew_failed(self) -> None:
        self.renew_failures.inc()

    def released(self) -> None:
        self._stop_leading("other")

    def child_started(self, pid: int) -> None:
        self.child_starts.inc()

    def closed(self) -> None:
        self._stop_leading("other")
        self.state.state("stopped")


# Errors that mean the client went away or stalled (hung up early, reset, timed out):
# counted and logged at debug, never a traceback.
CLIENT_ERRORS = (ConnectionError, TimeoutError)
# At most this many requests are served at once; more are closed at once, so a flood
# of connections cannot pile up threads in the supervisor's process.
MAX_CONCURRENT = 8
# A client must send its request and take the answer within this many seconds.
CLIENT_TIMEOUT = 5.0

log = logging.getLogger("coordinator")


def make_handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = CLIENT_TIMEOUT

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, with_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                text = generate_latest(metrics.registry).decode()
                # Only coordinator_info carries strings from outside (name, node id):
                # redacting metric names could mangle them (a password piece such as
                # "proces" would hide process_*).
                lines = text.split("\n")
                for i, line in enumerate(lines):
                    if line.startswith("coordinator_info{"):
                        lines[i] = redact.redact(line)
                self._send(200, CONTENT_TYPE_LATEST, "\n".join(lines), with_body)
            elif path == "/healthz":
                healthy, text = metrics.tracker.health()
                body = redact.redact(f"{'ok' if healthy else 'unhealthy'}: {text}\n")
                self._send(200 if healthy else 503, "text/plain; charset=utf-8", body, with_body)
            else:
                body = "not found: try /metrics or /healthz\n"
                self._send(404, "text/plain; charset=utf-8", body, with_body)

        def _send(self, code: int, content_type: str, text: str, with_body: bool) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds would drown the supervisor's log

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Room for a burst of probes: a full backlog makes clients retry their SYN a
    # second later.
    request_queue_size = 64
    metrics: Metrics | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CONCURRENT)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on a broken
        # resolver; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self._client_error("too many requests at once: closed a connection unanswered")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, CLIENT_ERRORS):
            self._client_error(f"a metrics client went away: {error}")
        else:  # a bug: one line, no traceback
            log.warning(
                "the metrics server failed on a request: %s: %s", type(error).__name__, error
            )

    def _client_error(self, text: str) -> None:
        if self.metrics is not None:
            self.metrics.client_errors.inc()
        log.debug(text)


class Server6(Server):
    address_family = socket.AF_INET6


def serve(config: Config, tracker: Tracker, host: str, port: int) -> Metrics:
    """Start serving /metrics and /healthz on a daemon thread; returns the observer."""
    metrics = Metrics(config, tracker)
    server_class = Server6 if ":" in host else Server
    try:
        server = server_class((host, port), make_handler(metrics))
        server.metrics = metrics
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        raise ConfigError(f"cannot serve metrics on {shown}:{port}: {exc.strerror or exc}") from exc
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    metrics.server = server
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    logging.getLogger("coordinator").info(
        "serving metrics on http://%s:%d/metrics and health on /healthz",
        f"[{bound_host}]" if ":" in bound_host else bound_host,
        bound_port,
    )
    return metrics
