"""The chat pages' Content-Security-Policy.

Model output ends up in these pages, so they allow no inline script and no
script from elsewhere: even a sanitizer bug cannot run an answer's
``<script>`` or ``onerror=``. Images only from our origin (and ``data:``):
an answer's ``![](https://elsewhere/?q=...)`` would otherwise send what the
model was prompted into to a third party. ``connect-src 'self'`` covers the
page's own WebSocket (CSP 3: ``'self'`` matches ``ws:``/``wss:`` of the same
host). Set per view, not site-wide: the admin and the API docs page (Swagger
UI's inline bootstrap script) keep working as they are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase

POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

View = Callable[..., HttpResponseBase]


def content_security_policy(view: View) -> View:
    """Send the chat pages' policy with ``view``'s responses."""

    @functools.wraps(view)
    def with_policy(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", POLICY)
        return response

    return with_policy
