"""compose/docker-compose.yml stays honest: no Docker engine is needed to check that it
parses, pins its images, checks its servers' health, runs three nodes per backend with
valid settings, and hands the suite the same variables the suite reads."""

from __future__ import annotations

import importlib.util
import re
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
    # One Dockerfile: the node image (the default, last target) on the official Python
    # image unless BASE says otherwise; the servers' targets serve compose/local.yml.
    dockerfile = (Path(ROOT) / "compose" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \$\{(\w+)\} AS (\w+)$", dockerfile, re.M)
    assert stages[-1] == ("BASE", "node"), stages
    [base] = re.findall(r"^ARG BASE=(\S+)$", dockerfile, re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-[\w.-]+", base), base
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) == len(stages)
    for name, service in services().items():
        if "build" in service:
            assert service["build"]["target"] == "node", name


def test_the_local_override_builds_every_image_from_the_one_dockerfile() -> None:
    local = yaml.safe_load((Path(ROOT) / "compose" / "local.yml").read_text())["services"]
    assert set(local) == set(services())  # every service runs a local image here
    dockerfile = (Path(ROOT) / "compose" / "Dockerfile").read_text()
    targets = {target for _, target in re.findall(r"^FROM \$\{(\w+)\} AS (\w+)$", dockerfile, re.M)}
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
