from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """The browser chat: pages over the chat domain's REST API and WebSocket (``/``)."""

    name = "chat"
