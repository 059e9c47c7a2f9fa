"""The schedule stores of coordinator.celery against real servers, on every backend."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest.importorskip("celery")  # the test extra installs it

from coordinator.celery.store import (
    ABSENT,
    Conflict,
    EntryState,
    Fenced,
    Settings,
    Store,
    open_store,
)
from coordinator.errors import BackendUnavailable, ConfigError
from tests.store import Store as Backend


def settings(backend: Backend, token: int = 0, name: str = "beat") -> Settings:
    return Settings(backend.kind, backend.url, backend.prefix, name, "n1", token)


@pytest.fixture
def schedule_store(store: Backend) -> Iterator[Store]:
    opened = open_store(settings(store))
    yield opened
    opened.close()


A = {"a": EntryState(1_000_000, 1)}
B = {"a": EntryState(2_000_000, 2), "b": EntryState(1_500_000, 0)}


def test_write_read_and_check_and_set(schedule_store: Store) -> None:
    empty = schedule_store.read()
    assert (empty.fence, empty.entries, empty.version) == (0, {}, ABSENT)
    v1 = schedule_store.write(100, A, ABSENT)
    got = schedule_store.read()
    assert (got.fence, got.entries, got.version) == (100, A, v1)
    v2 = schedule_store.write(100, B, v1)
    assert v2 != v1 and schedule_store.read().entries == B
    with pytest.raises(Conflict):  # written meanwhile: the version moved on
        schedule_store.write(100, A, v1)
    with pytest.raises(Conflict):  # exists already
        schedule_store.write(100, A, ABSENT)
    assert schedule_store.read().entries == B


def test_an_older_token_is_refused(schedule_store: Store) -> None:
    v1 = schedule_store.write(200, A, ABSENT)
    with pytest.raises(Fenced) as refused:
        schedule_store.write(199, B, v1)
    assert refused.value.newest == 200
    assert schedule_store.read().entries == A  # nothing written
    v2 = schedule_store.write(201, B, v1)  # a newer holder takes over the fence
    with pytest.raises(Fenced):
        schedule_store.write(200, A, v2)
    assert schedule_store.read().fence == 201


def test_each_lock_name_has_its_own_state(store: Backend) -> None:
    one, two = open_store(settings(store, name="one")), open_store(settings(store, name="two"))
    try:
        one.write(5, A, ABSENT)
        assert two.read().entries == {}
        two.write(1, B, ABSENT)  # another name's fence does not apply
        assert one.read().entries == A
    finally:
        one.close()
        two.close()


def test_settings_come_from_the_supervisor() -> None:
    env = {
        "COORDINATOR_BACKEND": "redis",
        "COORDINATOR_URL": "redis://127.0.0.1:1/0",
        "COORDINATOR_KEY_PREFIX": "p/",
        "COORDINATOR_NAME": "beat",
        "COORDINATOR_NODE_ID": "n1",
        "COORDINATOR_FENCING_TOKEN": "42",
    }
    got = Settings.from_env(env)
    assert (got.backend, got.url, got.key_prefix, got.name, got.token) == (
        "redis",
        "redis://127.0.0.1:1/0",
        "p/",
        "beat",
        42,
    )
    with pytest.raises(ConfigError, match="COORDINATOR_FENCING_TOKEN not set"):
        Settings.from_env({k: v for k, v in env.items() if k != "COORDINATOR_FENCING_TOKEN"})
    with pytest.raises(ConfigError, match="not a number"):
        Settings.from_env({**env, "COORDINATOR_FENCING_TOKEN": "x"})


def test_file_store_never_follows_a_symlink(tmp_path: os.PathLike[str]) -> None:
    locks = os.path.join(tmp_path, "locks")
    backend = Backend("file", locks, "p/")
    opened = open_store(settings(backend))
    try:
        target = os.path.join(tmp_path, "target")
        with open(target, "w") as f:
            f.write("{}")
        os.symlink(target, os.path.join(locks, "beat.celery.json"))
        with pytest.raises(BackendUnavailable):
            opened.read()
        with pytest.raises(BackendUnavailable):
            opened.write(1, A, ABSENT)
        with open(target) as f:
            assert f.read() == "{}"  # untouched
    finally:
        opened.close()
