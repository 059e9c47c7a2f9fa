"""Backends by name. Each module is imported only when chosen, so the core and the
file backend need no client library, and a missing one gives an install hint."""

from __future__ import annotations

import importlib
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


def create_backend(config: Config, observe_only: bool = False) -> Backend:
    """The backend `config` names. `observe_only`: for `status`, which must leave no
    trace (a backend module may offer create_observer for that)."""
    try:
        module_name, extra = BACKENDS[config.backend]
    except KeyError:
        raise ConfigError(
            f"unknown backend {config.backend!r} (choose from {', '.join(BACKENDS)})"
        ) from None
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
