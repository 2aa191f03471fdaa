"""ASGI entry point: HTTP through Django, WebSockets through Channels."""

from __future__ import annotations

import os

from llmproject.handlers import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")

# Set up Django (apps, models) before importing anything that uses the ORM.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from conversations.routing import websocket_urlpatterns  # noqa: E402
from conversations.ws_auth import WebSocketAuth  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": WebSocketAuth(URLRouter(websocket_urlpatterns)),
    }
)
