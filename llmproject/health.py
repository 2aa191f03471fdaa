"""Health endpoints for probes and load balancers.

- ``/healthz``: the process answers (liveness: restart it if not).
- ``/readyz``: it can serve (readiness: send it traffic only if so): every check of
  ``HEALTH_CHECKS`` passes within ``HEALTH_CHECK_TIMEOUT`` seconds: the
  database, Redis and, by default, at least one live worker for each model
  of the registry (``inference.liveness.workers_check``). ``200`` or ``503``,
  with a JSON body that names what is down.

A check is an async callable returning a dict with ``ok`` (bool) and whatever
details help, plus ``down`` (list of names) when it covers several things.
The settings name them by dotted path: the ground imports no app, and any app
can add its own (a circuit breaker's state, say).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils.module_loading import import_string

from llmproject.redis_client import redis_client

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[dict[str, Any]]]


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@functools.cache
def _checks() -> dict[str, Check]:
    return {name: import_string(path) for name, path in settings.HEALTH_CHECKS.items()}


async def _run(name: str, check: Check) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check(), settings.HEALTH_CHECK_TIMEOUT)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {settings.HEALTH_CHECK_TIMEOUT} s"}
    except Exception as exc:
        logger.warning("readiness check %s failed", name, exc_info=True)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


async def readyz(request: HttpRequest) -> JsonResponse:
    checks = _checks()
    results = dict(zip(checks, await asyncio.gather(*(_run(n, c) for n, c in checks.items())), strict=True))
    down = [
        f"{name}:{part}" if part else name
        for name, result in results.items()
        if not result["ok"]
        for part in (result.get("down") or [""])
    ]
    body = {"status": "unavailable" if down else "ready", "down": down, "checks": results}
    return JsonResponse(body, status=503 if down else 200)


def _database_ping() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def database_check() -> dict[str, Any]:
    """The default database answers a query."""
    await sync_to_async(_database_ping)()
    return {"ok": True}


async def redis_check() -> dict[str, Any]:
    """The Redis of the broker, streams and heartbeats answers."""
    await redis_client().ping()
    return {"ok": True}
