from __future__ import annotations

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """The model layer: registry, engines, parameters, tokens. No tables of its own
    (its migrations keep the history of the jobs' table, now conversations')."""

    name = "inference"
