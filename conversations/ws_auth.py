"""Who is on the other end of a WebSocket.

Browsers authenticate with their session cookie, and so must pass the Origin
check: a page on another site (or another local app, on another port) could
otherwise open a socket with the user's cookies. The Origin must match one of
``settings.WEBSOCKET_ALLOWED_ORIGINS`` exactly (scheme, host and port),
whatever ``ALLOWED_HOSTS`` says (channels' ``AllowedHostsOriginValidator``
let every origin in when it was ``*``, and ignored ports). Other clients send
``Authorization: Bearer <api key>``, which a browser page cannot forge, so
they skip the Origin check and cookies are not looked at.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from conversations.authentication import api_key_user, bearer_token


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin1")
    return None


def origin_allowed(origin: str | None) -> bool:
    """Whether a page of ``origin`` may use the user's session (read per connection,
    so the setting can change in tests)."""
    validator = OriginValidator(None, settings.WEBSOCKET_ALLOWED_ORIGINS)
    return bool(validator.valid_origin(urlparse(origin) if origin else None))


class WebSocketAuth:
    def __init__(self, app: Any) -> None:
        self.api_key_app = app
        self.browser_app = AuthMiddlewareStack(app)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        header = _header(scope, b"authorization")
        if header is None:
            if not origin_allowed(_header(scope, b"origin")):
                return await WebsocketDenier()(scope, receive, send)
            return await self.browser_app(scope, receive, send)
        token = bearer_token(header)
        user = await database_sync_to_async(api_key_user)(raw=token) if token else None
        scope = dict(scope, user=user or AnonymousUser())
        return await self.api_key_app(scope, receive, send)
