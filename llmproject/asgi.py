"""ASGI entry point: HTTP through Django, WebSockets through Channels.

The WebSocket application is named by dotted path in
``settings.WEBSOCKET_APPLICATION``, as the HTTP URLconf is in ``ROOT_URLCONF``:
the project package (the ground every app stands on) imports no app.
"""

from __future__ import annotations

import os

from llmproject.handlers import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")

# Set up Django (apps, models) before importing anything that uses the ORM.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": import_string(settings.WEBSOCKET_APPLICATION),
    }
)
