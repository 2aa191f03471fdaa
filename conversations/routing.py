"""The WebSocket side of the site: its URLs, behind the WebSocket's authentication.

Named in ``settings.WEBSOCKET_APPLICATION`` and loaded by ``llmproject.asgi``,
as Django loads the HTTP URLconf from ``ROOT_URLCONF``.
"""

from __future__ import annotations

from channels.routing import URLRouter
from django.urls import path

from conversations.consumers import ConversationConsumer
from conversations.ws_auth import WebSocketAuth

websocket_urlpatterns = [
    path("ws/conversations/<int:conversation_id>/", ConversationConsumer.as_asgi()),
]

application = WebSocketAuth(URLRouter(websocket_urlpatterns))
