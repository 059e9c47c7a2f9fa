"""The supervisor's states, apart from the supervisor: metrics list them without
importing the supervisor (which imports the observers)."""

from __future__ import annotations

from enum import Enum


class State(Enum):
    STARTING = "starting"
    CONTENDING = "contending"
    BACKEND_DOWN = "backend unavailable"
    STANDBY = "standby"
    DELAYING = "safety delay"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
