"""JSON logs, metrics, /healthz and the status file, with real supervisors and servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator import observe
from coordinator.backends import create_backend
from coordinator.config import Config
from coordinator.supervisor import Supervisor
from tests.cluster import ROOT, alive, spawn_cli, stop_cli, wait_until
from tests.conftest import Store
from tests.servers import RedisServer, free_port
from tests.test_bad_input import SECRET

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return samples_of(response.read().decode())


def sample(port: int, key: str) -> float | None:
    """One sample, or None while nothing serves on the port yet."""
    try:
        return scrape(port).get(key)
    except OSError:
        return None


def samples_of(text: str) -> dict[str, float]:
    """Every sample in a Prometheus text exposition, keyed like `name{label="value"}`."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def read_status(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def supervise(store: Store, node: str, port: int, status_file: Path, *extra: str) -> Any:
    return spawn_cli(
        *store.cli_args(),
        "--name",
        "m",
        "--ttl",
        str(store.ttl),
        "--grace",
        str(store.ttl / 3),
        "--safety-delay",
        "0",
        "--node-id",
        node,
        "--metrics-address",
        f"127.0.0.1:{port}",
        "--status-file",
        str(status_file),
        *extra,
        "--",
        *SLEEPER,
    )


def test_handoff_shows_in_metrics_health_and_status_files(store: Store, tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [supervise(store, f"n{i}", ports[i], files[i]) for i in range(2)]
    try:

        def states() -> list[str]:
            return [read_status(f)["state"] if f.exists() else "" for f in files]

        wait_until(lambda: sorted(states()) == ["running", "standby"], timeout=store.ttl + 10)
        lead = states().index("running")
        wait = 1 - lead
        leader, standby = read_status(files[lead]), read_status(files[wait])

        assert leader["leader"] is True and leader["node_id"] == f"n{lead}"
        assert leader["pid"] == procs[lead].pid and alive(leader["child_pid"])
        assert leader["fresh_until"] > time.time()
        assert standby["leader"] is False and standby["fencing_token"] is None
        assert standby["pid"] == procs[wait].pid and standby["child_pid"] is None

        up, down = scrape(ports[lead]), scrape(ports[wait])
        assert up["coordinator_leader"] == 1 and down["coordinator_leader"] == 0
        assert up['coordinator_state{coordinator_state="running"}'] == 1
        assert down['coordinator_state{coordinator_state="standby"}'] == 1
        assert up['coordinator_transitions_total{reason="acquired"}'] == 1
        assert down['coordinator_transitions_total{reason="acquired"}'] == 0
        assert up["coordinator_child_starts_total"] == 1
        assert down["coordinator_child_starts_total"] == 0
        assert up["coordinator_fencing_token"] == leader["fencing_token"]
        info = (
            f'coordinator_info{{backend="{store.kind}",name="m",node_id="n{lead}",version="0.1.0"}}'
        )
        assert up[info] == 1

        # Renewals show in the histogram, in the age gauge and in the status file.
        first_renew = leader["last_renew"]
        wait_until(
            lambda: scrape(ports[lead])["coordinator_renew_seconds_count"] >= 1, timeout=store.ttl
        )
        assert scrape(ports[lead])["coordinator_seconds_since_last_renew"] < store.ttl / 3 + 1
        assert scrape(ports[wait])["coordinator_seconds_since_last_renew"] != 0  # NaN: not holding
        wait_until(lambda: read_status(files[lead])["last_renew"] != first_renew, timeout=5)

        code, body = healthz(ports[lead])
        assert code == 200 and body.startswith("ok: running: holding the lease, renewed")
        assert healthz(ports[wait]) == (200, "ok: standby: not holding the lease\n")

        # SIGTERM the leader: the standby takes over, and every view says so.
        stop_cli(procs[lead])
        assert read_status(files[lead])["state"] == "stopped"
        assert read_status(files[lead])["leader"] is False
        wait_until(lambda: read_status(files[wait])["state"] == "running", timeout=5)
        taken = read_status(files[wait])
        assert taken["leader"] is True and taken["fencing_token"] > leader["fencing_token"]
        after = scrape(ports[wait])
        assert after["coordinator_leader"] == 1
        assert after['coordinator_transitions_total{reason="acquired"}'] == 1
        assert after["coordinator_child_starts_total"] == 1
        assert after["coordinator_fencing_token"] == taken["fencing_token"]
        assert healthz(ports[wait])[0] == 200
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_cli(proc)
    assert read_status(files[wait])["state"] == "stopped"


def test_a_lost_lease_is_counted_and_logged_with_its_reason(store: Store, tmp_path: Path) -> None:
    port = free_port()
    proc = supervise(store, "n1", port, tmp_path / "s.json", "--log-format", "json")
    try:
        starts = "coordinator_child_starts_total"
        wait_until(lambda: sample(port, starts) == 1, timeout=store.ttl + 10)
        store.delete_lock("m")
        lost = 'coordinator_transitions_total{reason="lease_lost"}'
        wait_until(lambda: sample(port, lost) == 1, timeout=store.ttl + 5)
        # It contends again, and with nobody else around, wins again.
        wait_until(lambda: sample(port, starts) == 2, timeout=store.ttl + 10)
        samples = scrape(port)
        assert samples['coordinator_transitions_total{reason="acquired"}'] == 2
        assert samples["coordinator_leader"] == 1
        assert healthz(port)[0] == 200
    finally:
        out = stop_cli(proc)
    lines = [json.loads(line) for line in out.splitlines()]
    [lost] = [line for line in lines if line.get("reason") == "lease_lost"]
    assert lost["event"] == "stopping" and lost["level"] == "warning"
    assert lost["message"].startswith("lease lost: ")


def test_json_logs_parse_and_hold_no_password(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password=SECRET)
    server.stop()  # down at first: the standby says so, then acquires when it is back
    proc = spawn_cli(
        *("-b", "redis", "--url", server.url, "--name", "j", "--ttl", "3", "--grace", "1"),
        *("--node-id", "n1", "--safety-delay", "0"),
        *("--", sys.executable, "-c", "import time; time.sleep(0.5)"),
        env={"COORDINATOR_LOG_FORMAT": "json"},
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "contending"
        second = json.loads(proc.stdout.readline())
        assert second["event"] == "backend_down" and second["level"] == "warning"
        assert second["state"] == "backend_down"
        server.start()
        assert proc.wait(timeout=20) == 0
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
    lines = [first, second] + [json.loads(line) for line in out.splitlines()]
    assert SECRET not in json.dumps(lines)
    assert ":***@127.0.0.1" in second["message"]
    for line in lines:
        assert {"ts", "level", "message", "name", "node_id", "pid", "state"} <= line.keys()
        assert line["name"] == "j" and line["node_id"] == "n1" and line["pid"] == proc.pid
    events = [line.get("event") for line in lines]
    assert events == [
        "contending",
        "backend_down",
        "acquired",
        "running",
        "exited",
        "released",
    ], events
    assert ":***@127.0.0.1" in lines[2]["message"]


def test_healthz_fails_while_the_loop_is_stuck_holding(tmp_path: Path) -> None:
    """A loop that stops renewing while it holds the lease (here: a hook that blocks)
    turns /healthz to 503 once the last renewal is older than the fencing point."""
    config = Config(command=("sleep", "30"), url=str(tmp_path), name="h", ttl=1.5, grace=0.2)
    tracker = observe.Tracker(config)
    port = free_port()
    observer = observe.start(config, tracker, f"127.0.0.1:{port}")
    stuck = threading.Event()

    class StuckOnce(observe.Observer):
        def renewed(self, seconds: float) -> None:
            if not stuck.is_set():
                stuck.set()
                time.sleep(tracker.renew_limit + 0.6)

    tracker.others.append(StuckOnce())
    seen: list[tuple[float, int, str]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append((time.monotonic(), *healthz(port)))
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    timer = threading.Timer(4.0, os.kill, args=(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        Supervisor(config, create_backend(config), observer).run()
        final = healthz(port)
    finally:
        timer.cancel()
        done.set()
        poller.join()
        metrics = tracker.others[0]
        server = getattr(metrics, "server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
    codes = [code for _, code, _ in seen]
    bad = [body for _, code, body in seen if code == 503]
    assert codes[0] == 200 and 503 in codes, codes
    assert bad[0].startswith("unhealthy: running: holding the lease but the last renewal was")
    # Past the fencing point the loop stopped the child, contended again and holds again.
    assert codes[codes.index(503) :].count(200) > 0, codes
    assert final == (503, "unhealthy: stopped: the supervisor loop has ended\n")
    samples = scrape_registry(metrics)
    # The stuck loop could not stop its child: the watchdog killed it at the last safe
    # moment, and the loop, back, recorded that as a pause.
    assert samples['coordinator_transitions_total{reason="paused"}'] == 1
    assert samples['coordinator_transitions_total{reason="acquired"}'] == 2


def scrape_registry(metrics: object) -> dict[str, float]:
    from prometheus_client import generate_latest

    return samples_of(generate_latest(metrics.registry).decode())  # type: ignore[attr-defined]


def test_without_metrics_prometheus_client_is_not_imported() -> None:
    code = (
        "import sys\n"
        "from coordinator import cli, observe, status, supervisor\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", ":{port}"])
def test_metrics_address_forms(address: str, tmp_path: Path) -> None:
    port = free_port()
    proc = spawn_cli(
        "--url", str(tmp_path), "--metrics-address", address.format(port=port), "--", *SLEEPER
    )
    try:
        wait_until(lambda: b"coordinator_leader 1.0" in fetch(port, "/metrics"), timeout=10)
        assert fetch(port, "/nope").startswith(b"not found")
    finally:
        out = stop_cli(proc)
    host = "0.0.0.0" if address.startswith(":") else "127.0.0.1"
    assert f"serving metrics on http://{host}:{port}/metrics" in out


def fetch(port: int, path: str) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        return bytes(exc.read())
    except OSError:
        return b""
