"""Serving metrics to Prometheus, and to nobody else.

- ``/metrics`` in the web process: everything ``prometheus_client`` holds in this
  process (django-prometheus's request, database and cache families, ours, the
  process's own), then what the collectors of ``METRICS_COLLECTORS`` read at
  scrape time (queue depth and live workers per model, from Redis).
- ``/metrics/targets``: the model workers' metrics addresses, in the shape of
  Prometheus's HTTP service discovery, so one scrape config finds every worker
  (``deploy/prometheus/prometheus.yml``).
- ``serve_worker_metrics``: a model worker's own port (the worker's process, its
  engine, vLLM's own metrics), a thread beside the worker.

Each process serves its own: no shared multiprocess directory, so workers can
run in other containers or on other hosts, and each is a target whose ``up``
tells whether it answers.

A client is let in if its address is in ``METRICS_ALLOWED_IPS`` or it sends
``Authorization: Bearer <METRICS_TOKEN>``. Behind a reverse proxy on the same
host every client looks local: keep the proxy from forwarding ``/metrics``,
or set ``METRICS_ALLOWED_IPS`` to nothing and use the token.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.module_loading import import_string
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


@functools.cache
def _allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(n.strip(), strict=False) for n in settings.METRICS_ALLOWED_IPS if n.strip()
    )


def metrics_access(*, remote_addr: str | None, authorization: str) -> bool:
    """May this client read metrics? By its address (``METRICS_ALLOWED_IPS``) or its bearer
    token (``METRICS_TOKEN``)."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    if not remote_addr:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in _allowed_networks())


def _refused() -> HttpResponse:
    response = JsonResponse({"detail": "metrics are for the monitoring system only"}, status=403)
    if settings.METRICS_TOKEN:
        response.status_code = 401
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _request_allowed(request: HttpRequest) -> bool:
    return metrics_access(
        remote_addr=request.META.get("REMOTE_ADDR"), authorization=request.headers.get("Authorization", "")
    )


class _Scrape:
    """What one scrape of ``/metrics`` reports: this process's registry, then the settings'
    collectors (read now)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()
        for collector in self._collectors:
            try:
                yield from collector.collect()
            except Exception:  # Redis away: the rest of the page still helps
                logger.warning("metrics collector %r failed", collector, exc_info=True)


@functools.cache
def _web_collectors() -> tuple[Collector, ...]:
    return tuple(import_string(path)() for path in settings.METRICS_COLLECTORS)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: Prometheus's text format (synchronous: a scrape is a few ms of CPU
    and Redis reads, every 15 s; Django runs it in a thread)."""
    if not _request_allowed(request):
        return _refused()
    return HttpResponse(generate_latest(_Scrape(_web_collectors())), content_type=CONTENT_TYPE_LATEST)  # type: ignore[arg-type]


def metrics_targets_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics/targets``: the live workers' metrics addresses for Prometheus's
    ``http_sd_configs``: ``[{"targets": ["host:port"], "labels": {...}}, ...]``."""
    if not _request_allowed(request):
        return _refused()
    targets: Callable[[], list[dict[str, Any]]] = import_string(settings.METRICS_TARGETS)
    return JsonResponse(targets(), safe=False)


# --- A worker's own port ------------------------------------------------------------


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a scrape every 15 s is no news
        pass


def _worker_app(collectors: tuple[Collector, ...]) -> Callable[..., Iterable[bytes]]:
    scrape = _Scrape(collectors)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not metrics_access(
            remote_addr=environ.get("REMOTE_ADDR"), authorization=environ.get("HTTP_AUTHORIZATION", "")
        ):
            headers = [("Content-Type", "application/json")]
            if settings.METRICS_TOKEN:
                headers.append(("WWW-Authenticate", 'Bearer realm="metrics"'))
                start_response("401 Unauthorized", headers)
            else:
                start_response("403 Forbidden", headers)
            return [json.dumps({"detail": "metrics are for the monitoring system only"}).encode()]
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"metrics are at /metrics\n"]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(scrape)]  # type: ignore[arg-type]

    return app


def serve_worker_metrics(*, addr: str, port: int, collectors: tuple[Collector, ...] = ()) -> int:
    """Serve this process's metrics (and ``collectors``') on ``addr:port`` from a daemon
    thread, with the same access rule as ``/metrics``; returns the port bound (``port``
    0: any free one). Raises ``OSError`` if the port cannot be bound."""
    server = make_server(addr, port, _worker_app(collectors), _ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return int(server.server_address[1])
