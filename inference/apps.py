from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"

    def ready(self) -> None:
        # Connect the worker signal handlers and remote-control commands.
        from inference import worker  # noqa: F401
