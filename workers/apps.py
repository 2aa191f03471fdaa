from __future__ import annotations

from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"

    def ready(self) -> None:
        # Connect the worker signal handlers and register the remote-control
        # commands (``celery inspect engine_stats`` checks the name locally too).
        # They act only in a model worker; the engine itself is imported there.
        from workers import signals  # noqa: F401
