"""Who is on the other end of a WebSocket.

Browsers authenticate with their session cookie, and so must pass the Origin
check (a page on another site could otherwise open a socket with the user's
cookies). Other clients send ``Authorization: Bearer <api key>``, which a
browser page cannot forge, so they skip the Origin check and cookies are not
looked at.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import AllowedHostsOriginValidator
from django.contrib.auth.models import AnonymousUser

from conversations.authentication import api_key_user, bearer_token


def _authorization(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return value.decode("latin1")
    return None


class WebSocketAuth:
    def __init__(self, app: Any) -> None:
        self.api_key_app = app
        self.browser_app = AllowedHostsOriginValidator(AuthMiddlewareStack(app))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        header = _authorization(scope)
        if header is None:
            return await self.browser_app(scope, receive, send)
        token = bearer_token(header)
        user = await database_sync_to_async(api_key_user)(raw=token) if token else None
        scope = dict(scope, user=user or AnonymousUser())
        return await self.api_key_app(scope, receive, send)
