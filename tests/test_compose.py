"""compose/docker-compose.yml stays honest: no Docker engine is needed to check that it
parses, pins its images, checks its servers' health, runs three nodes per backend with
valid settings, and hands the suite the same variables the suite reads."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.config import Config
from tests.cluster import ROOT

COMPOSE = Path(ROOT) / "compose" / "docker-compose.yml"


def services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    result: dict[str, Any] = data["services"]
    return result


def test_images_are_pinned_to_a_release() -> None:
    for name, service in services().items():
        image = service["image"]
        if "build" in service:
            assert (Path(ROOT) / service["build"]["dockerfile"]).exists(), name
            continue
        # A full release: major.minor.patch (PostgreSQL's releases have two numbers).
        release = r"\d+\.\d+" if image.startswith("postgres:") else r"\d+\.\d+\.\d+"
        assert re.fullmatch(rf"[\w./-]+:{release}(-[\w.]+)?", image), f"{name}: {image}"
    # One Dockerfile on one base argument: BASE (the official Python image unless told
    # otherwise) under a shared `system` stage, every target on that; the node image is
    # the default, last target; the servers' targets serve compose/local.yml.
    dockerfile = (Path(ROOT) / "compose" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.M)
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) == len(stages)
    assert stages[0] == ("${BASE}", "system"), stages
    assert {parent for parent, _ in stages[1:]} == {"system"}, stages
    assert stages[-1][1] == "node", stages
    global_args = re.findall(r"^ARG (\w+)", dockerfile.split("\nFROM ")[0], re.M)
    assert global_args == ["BASE"], global_args
    [base] = re.findall(r"^ARG BASE=(\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-[\w.-]+", base), base
    for name, service in services().items():
        if "build" in service:
            assert service["build"]["target"] == "node", name


def test_the_local_override_builds_every_image_from_the_one_dockerfile() -> None:
    local = yaml.safe_load((Path(ROOT) / "compose" / "local.yml").read_text())["services"]
    assert set(local) == set(services())  # every service runs a local image here
    dockerfile = (Path(ROOT) / "compose" / "Dockerfile").read_text()
    targets = {target for _, target in re.findall(r"^FROM (\S+) AS (\w+)$", dockerfile, re.M)}
    for name, service in local.items():
        assert service["image"].startswith("localhost/coordinator-"), name
        target = service.get("build", {}).get("target") or service["image"].split("-")[1][:-4]
        assert target in targets, name


def test_every_service_that_others_wait_for_has_a_health_check() -> None:
    all_services = services()
    for name, service in all_services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, name
            assert "healthcheck" in all_services[dependency], dependency


def test_three_nodes_per_backend_with_settings_the_program_accepts() -> None:
    nodes: dict[str, list[str]] = {}
    for name, service in services().items():
        env = service.get("environment", {})
        backend = env.get("COORDINATOR_BACKEND")
        if backend is None:
            continue
        nodes.setdefault(backend, []).append(name)
        assert service["init"] is True, name  # signals reach the supervisor, strays are reaped
        assert "--metrics-address" in service["command"], name
        command = service["command"]
        child = tuple(command[command.index("--") + 1 :])
        # The same validation the program runs at start (timing rule, consul minimum).
        config = Config(
            command=child,
            backend=backend,
            name="demo",
            ttl=float(env["COORDINATOR_TTL"]),
            grace=float(env["COORDINATOR_GRACE"]),
        )
        if backend == "consul":
            from coordinator.backends.consul import MIN_TTL

            assert config.ttl >= MIN_TTL
    assert {k: len(v) for k, v in nodes.items()} == {"redis": 3, "postgres": 3, "consul": 3}


def test_the_test_service_uses_the_variables_the_suite_reads() -> None:
    tests = services()["tests"]
    assert tests["profiles"] == ["test"]
    conftest = (Path(ROOT) / "tests" / "conftest.py").read_text()
    read = set(re.findall(r'"(COORDINATOR_TEST_\w+_URL)"', conftest))
    assert read == {
        "COORDINATOR_TEST_REDIS_URL",
        "COORDINATOR_TEST_POSTGRES_URL",
        "COORDINATOR_TEST_CONSUL_URL",
    }
    assert set(tests["environment"]) == read
    assert set(tests["depends_on"]) == {"redis", "postgres", "consul"}


def test_the_compose_suite_tells_probes_of_different_containers_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each container has its own pids: the same pid in two nodes' logs is two probes,
    and one that took the flock before the other stopped is reported."""
    spec = importlib.util.spec_from_file_location("suite", Path(ROOT) / "compose" / "suite.py")
    assert spec is not None and spec.loader is not None
    suite = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "suite", suite)  # dataclasses look their module up
    spec.loader.exec_module(suite)
    monkeypatch.setattr(suite, "running", lambda service: True)
    (tmp_path / "redis-probe1.log").write_text("start 10 6 5 100.0\nstop 10 6 5 103.0\n")
    (tmp_path / "redis-probe2.log").write_text("start 10 6 6 104.0\n")
    probes = suite.Probes("redis", tmp_path)
    assert len({r.pid for r in probes.records()}) == 2
    assert probes.problems() == []
    (tmp_path / "redis-probe2.log").write_text("start 10 6 6 102.0\n")
    [problem] = probes.problems()
    assert "took the flock before" in problem


def test_the_test_profile_names_what_it_leaves_out_and_fails_any_other_skip(
    tmp_path: Path,
) -> None:
    """compose/profile.py: a listed test is deselected and counted; a skip elsewhere
    fails the run; every listed name is a test that exists."""
    spec = importlib.util.spec_from_file_location("profile", Path(ROOT) / "compose" / "profile.py")
    assert spec is not None and spec.loader is not None
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    for prefix in profile.OWN_SERVERS:
        path, _, name = prefix.partition("::")
        source = (Path(ROOT) / path).read_text()
        assert not name or f"def {name}(" in source, prefix
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_redis_faults.py").write_text("def test_listed():\n    pass\n")
    (tmp_path / "tests" / "test_other.py").write_text(
        "import pytest\n\ndef test_skips():\n    pytest.skip('no server')\n\n"
        "def test_runs():\n    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "compose.profile", "-p", "no:cacheprovider"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 deselected" in result.stdout, result.stdout
    assert "skipped in the compose profile: no server" in result.stdout, result.stdout
    assert "1 pauses and restarts a redis-server of its own" in result.stdout, result.stdout


def test_the_fault_suites_proxy_listens_on_loopback_for_a_server_in_another_container() -> None:
    """In the `tests` container the servers have other containers' names: the proxy
    cannot bind those, so it listens on loopback (it connects only when used)."""
    from tests.faults.proxy import Proxy

    for host, listens in [("redis", "127.0.0.1"), ("127.0.0.1", "127.0.0.1")]:
        proxy = Proxy(6379, host)
        try:
            assert proxy.listener.getsockname()[0] == listens, host
            assert proxy.upstream == (host, 6379)
        finally:
            proxy.close()
