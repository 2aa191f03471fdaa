"""Django's ASGI handlers: without a thread start per request, and none of the
site's middleware for the OpenAI API.

Django runs each request in a fresh ``ThreadSensitiveContext``: its first
thread-sensitive ``sync_to_async`` (Django's own request signals, any ORM
call) starts a new one-thread executor, and leaving the context starts
another thread to join it. ``Thread.start`` blocks the event loop until the
new thread has been scheduled: on a busy machine (measured here: 2 cores, a
vLLM engine spinning on one) that stalled every other request and stream of
the process for milliseconds at a time, hundreds of times a second.

Here each request borrows a one-thread executor from a pool and gives it back
(asgiref's ``ThreadSensitiveContext(executor=...)``, whose caller owns the
executor). Semantics are unchanged: one thread per request for its
thread-sensitive code, including database connections, which Django still
opens and closes per request as ``CONN_MAX_AGE`` says.

Django's middleware are synchronous (``MiddlewareMixin``): in an async
handler each ``process_request``/``process_view``/``process_response`` is a
``sync_to_async`` hop to the request's thread and back, about a dozen per
request for the site's list, each waiting for the OS to schedule that thread.
The OpenAI API (``/v1/``: bearer keys, JSON, no sessions, cookies, CSRF or
HTML) needs none of them, so its requests go to a handler without middleware;
so do the operations endpoints (``/metrics``, ``/healthz``, ``/readyz``),
which a probe calls every few seconds. The bare handler counts its requests
itself, in django-prometheus's families (the site's are counted by its
middleware): one status-by-view counter and one latency-by-view histogram,
2.5 to 3 us a request (``bench/ops_overhead.py``), against 10 ms or so of
the web server's CPU per request.

Both read a request's body up to ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and answer a
larger one with 413, in the shape of the API under whose path it came
(``llmproject.error_views``): Django's own handler spools a body of any size
to a temporary file before a view can refuse it, and its refusal is an HTML
400.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpResponse
from django.urls import set_script_prefix, set_urlconf
from django.utils.log import log_response

from llmproject.error_views import api_error_response, too_large_response

# Idle executors kept for reuse; more are made under a burst and dropped after.
POOL_SIZE = 48
# Served without middleware (see above).
BARE_PREFIXES = ("/v1/", "/metrics", "/healthz", "/readyz")
# A client that sent a body over the limit sees its 413 only if it gets to read
# it: most send the whole body before reading, and a server that closes with
# unread data resets the connection, the answer lost. So the rest of the body
# is read and thrown away, up to this many bytes; past that the connection is
# closed.
DRAIN_LIMIT = 64 * 1024 * 1024


class BodyTooLarge(Exception):
    """The request's body is over ``DATA_UPLOAD_MAX_MEMORY_SIZE``."""


class _ExecutorPool:
    def __init__(self, size: int) -> None:
        self._idle: list[ThreadPoolExecutor] = []
        self._size = size
        self._lock = threading.Lock()

    def acquire(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def release(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)


class PooledThreadsASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._executors = _ExecutorPool(POOL_SIZE)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self._executors.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        except BodyTooLarge:
            await self.send_response(too_large_response(scope["path"]), send)
        finally:
            # A sync call cancelled by a disconnect may still be running on it;
            # the next request's calls then wait behind it, in order.
            self._executors.release(executor)

    async def read_body(self, receive: Any) -> Any:
        """Django's ``read_body``, stopping at ``DATA_UPLOAD_MAX_MEMORY_SIZE``: raises
        ``BodyTooLarge`` past it (the rest of the body read and dropped).

        Held in memory (it is at most that size), not in Django's spooled
        temporary file: 0.4 us a request instead of 4 (measured, 600 bytes).
        """
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            return await super().read_body(receive)
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _drain(receive, message)
                raise BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def create_request(self, scope: dict[str, Any], body_file: Any) -> tuple[Any, HttpResponse | None]:
        request, error = super().create_request(scope, body_file)
        if request is None:  # a path that is not UTF-8, say: in the API's shape, under its prefix
            shaped = api_error_response(
                scope["path"], "bad request", status=error.status_code, code="bad_request"
            )
            error = shaped or error
        return request, error


async def _drain(receive: Any, message: dict[str, Any]) -> None:
    drained = 0
    while message.get("more_body", False) and drained < DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        drained += len(message.get("body", b""))


class BareASGIHandler(PooledThreadsASGIHandler):
    """A handler with no middleware at all (what ``load_middleware`` builds for an empty
    ``MIDDLEWARE``): URL resolution, the view, exception-to-response conversion.

    Nor does it send ``request_started``: Django sends it with ``asend``, and its
    receivers (resetting the query log, closing the request thread's stale
    database connections) are synchronous, so it is a thread hop before every
    view. Every request of this handler ends with ``response.close()`` on the
    request's thread, which sends ``request_finished`` and closes the
    connections it used; a request never finds one left open. ``handle`` is
    otherwise Django 5.2's, line for line.
    """

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return

        async def process_request(request: Any, send: Any) -> Any:
            started = time.perf_counter()
            response = await self.run_get_response(request)
            self._counted.observe(request, response, time.perf_counter() - started)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client disconnected during send_response
            return response

        # Whichever ends first: the response, or the client's disconnect.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # views handle their cancellation
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await sync_to_async(response.close)()
        body_file.close()

    async def get_response_async(self, request: Any) -> Any:
        """Django's, logging an error response on the event loop: Django hands the log
        line to a thread, a hop for every 4xx (under a burst of 429s, one each)."""
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response

    def load_middleware(self, is_async: bool = False) -> None:
        self._counted = _RequestCounter()
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        self._middleware_chain = convert_exception_to_response(get_response)


# As django-prometheus labels methods (any other is one label: no unbounded series).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS", "CONNECT", "PATCH"})


class _RequestCounter:
    """The bare handler's requests in django-prometheus's families, as its middleware counts
    the site's: responses by status, view and method; time to the response by view and
    method (for a stream, to its headers). Children are kept per label set: ``labels()``
    is most of the cost of an observation."""

    def __init__(self) -> None:
        from django_prometheus.middleware import Metrics

        self._metrics = Metrics.get_instance()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, request: Any, response: Any, seconds: float) -> None:
        match = request.resolver_match
        method = request.method if request.method in _METHODS else "<invalid method>"
        key = (match.view_name if match is not None else "<unnamed view>", method, response.status_code)
        children = self._children.get(key)
        if children is None:
            view, method, status = key
            children = self._children[key] = (
                self._metrics.responses_by_status_view_method.labels(str(status), view, method),
                self._metrics.requests_latency_by_view_method.labels(view, method),
            )
        children[0].inc()
        children[1].observe(seconds)


class PathPrefixRouter:
    """HTTP requests under one of ``prefix`` to one ASGI app, the rest to another."""

    def __init__(self, prefix: str | tuple[str, ...], matched: Any, other: Any) -> None:
        self.prefix = prefix
        self.matched = matched
        self.other = other

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        app = self.matched if scope.get("path", "").startswith(self.prefix) else self.other
        await app(scope, receive, send)


def get_asgi_application() -> PathPrefixRouter:
    """Like ``django.core.asgi.get_asgi_application``: the site with its middleware,
    ``/v1/`` (the OpenAI API) and the operations endpoints without."""
    import django

    django.setup(set_prefix=False)
    return PathPrefixRouter(BARE_PREFIXES, BareASGIHandler(), PooledThreadsASGIHandler())
