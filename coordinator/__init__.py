"""Run one command on exactly one node of a cluster at a time."""

__version__ = "0.1.0"
