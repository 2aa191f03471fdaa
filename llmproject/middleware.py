"""WhiteNoise and django-prometheus for an async Django.

WhiteNoise's middleware is synchronous only. Under ASGI, Django then runs the
rest of the middleware chain and every view through a ``sync_to_async`` and
an ``async_to_sync`` (two thread hops, a thread per request) on *every*
request, static or not: measured, a visible share of the web process's CPU
under streaming load. Looking a path up is a dict lookup (a filesystem walk
only with autorefresh, in development), so this subclass does it inline and
only serving a file goes to a thread.
"""

from __future__ import annotations

import types
from typing import Any

import django_prometheus.middleware
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)  # type: ignore[no-any-return]


class _InlineHooks:
    """django-prometheus's middleware, run inline on an async request path.

    Its hooks only count and time (CPU, microseconds). As Django's
    ``MiddlewareMixin`` they would each be a ``sync_to_async`` hop to the
    request's thread and back under ASGI (four per request for the pair),
    the cost ``AsyncWhiteNoiseMiddleware`` above avoids for WhiteNoise.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]
        if self.async_mode:  # type: ignore[attr-defined]
            # The handler adapts view, exception and template-response hooks on
            # its own: give it coroutine methods, which it calls as they are
            # (bound: it names a hook's class from its __self__ in its errors).
            for name in ("process_view", "process_exception", "process_template_response"):
                hook = getattr(self, name, None)
                if hook is not None:
                    setattr(self, name, types.MethodType(_inline(hook), self))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request)  # type: ignore[attr-defined]
        response = response or await self.get_response(request)  # type: ignore[attr-defined]
        return self.process_response(request, response)  # type: ignore[attr-defined,no-any-return]


def _inline(hook: Any) -> Any:
    async def inline(self: Any, *args: Any) -> Any:
        return hook(*args)

    return inline


class PrometheusBeforeMiddleware(_InlineHooks, django_prometheus.middleware.PrometheusBeforeMiddleware):
    """First in ``MIDDLEWARE``: counts requests and times them through every middleware."""


class PrometheusAfterMiddleware(_InlineHooks, django_prometheus.middleware.PrometheusAfterMiddleware):
    """Last in ``MIDDLEWARE``: counts by view, method and status, and times the view."""
