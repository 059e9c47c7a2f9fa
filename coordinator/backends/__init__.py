"""Backends by name. Each module is imported only when chosen, so the core and the
file backend need no client library, and a missing one gives an install hint."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from coordinator.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from coordinator.backends.base import Backend
    from coordinator.config import Config

# name -> (module, the pip extra that brings its client library)
BACKENDS: dict[str, tuple[str, str | None]] = {
    "file": ("coordinator.backends.file", None),
    "redis": ("coordinator.backends.redis", "redis"),
    "postgres": ("coordinator.backends.postgres", "postgres"),
    "consul": ("coordinator.backends.consul", "consul"),
}


# Where a network backend reads its address when --url is absent, and its secrets.
ADDRESS_VARIABLE = {"redis": "REDIS_URL", "postgres": "DATABASE_URL", "consul": "CONSUL_HTTP_ADDR"}
SECRET_VARIABLES = {"consul": ("CONSUL_HTTP_TOKEN",)}


def create_backend(config: Config, observe_only: bool = False) -> Backend:
    """The backend `config` names. `observe_only`: for `status`, which must leave no
    trace (a backend module may offer create_observer for that)."""
    try:
        module_name, extra = BACKENDS[config.backend]
    except KeyError:
        raise ConfigError(
            f"unknown backend {config.backend!r} (choose from {', '.join(BACKENDS)})"
        ) from None
    if config.backend in ADDRESS_VARIABLE:
        variable = ADDRESS_VARIABLE[config.backend]
        given: list[tuple[str, str | None]] = [
            ("--url", config.url) if config.url else (variable, os.environ.get(variable))
        ]
        for name in SECRET_VARIABLES.get(config.backend, ()):
            given.append((name, os.environ.get(name)))
        check_utf8(*given)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependency(
            f"the {config.backend} backend needs its client library ({exc.name} is missing): "
            f"pip install 'coordinator[{extra}]'"
        ) from exc
    factory = getattr(module, "create_observer", None) if observe_only else None
    backend: Backend = (factory or module.create)(config)
    return backend


def check_utf8(*given: tuple[str, str | None]) -> None:
    """A byte of the command line or environment that is not UTF-8 reaches Python as a
    lone surrogate, which no client library can send: refused at start. The value is
    not shown (it may be a password)."""
    for name, value in given:
        if value and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(
                    f"{name} is not valid UTF-8 (a byte the locale cannot decode): "
                    "addresses and passwords must be UTF-8 text"
                ) from None
