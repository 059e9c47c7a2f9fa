"""A Celery beat scheduler that keeps its schedule in coordinator's backend.

    coordinator --backend redis --name beat -- celery -A proj beat -S coordinator.celery.Scheduler

See docs/celery.md.
"""

from coordinator.celery.scheduler import Scheduler

__all__ = ["Scheduler"]
