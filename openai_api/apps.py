from __future__ import annotations

from django.apps import AppConfig


class OpenaiApiConfig(AppConfig):
    """OpenAI-compatible API (``/v1/``) over the platform's conversations and queues."""

    name = "openai_api"
    label = "openai_api"
