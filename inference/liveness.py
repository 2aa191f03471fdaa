"""Which models have a live worker: a heartbeat per worker in Redis.

Each worker, once its engine is ready, refreshes its entry in the sorted set
``llm:workers:<model>`` (member: the worker's id, score: unix time) every
``LLM_HEARTBEAT_INTERVAL`` seconds and removes it when it stops
(``workers.heartbeat``). An entry older than ``LLM_HEARTBEAT_TTL`` is a
worker that died without saying so. The API asks ``workers_alive`` (one
ZCOUNT) before it queues a job that nobody would run; a Celery ping would
cost a broadcast round trip and a timeout on every request.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings

from llmproject.redis_client import redis_client


def heartbeat_key(model: str) -> str:
    """The sorted set of ``model``'s workers and their last beats."""
    return f"llm:workers:{model}"


async def workers_alive(*, model: str) -> int:
    """How many workers of ``model`` have beaten within the TTL."""
    return int(await redis_client().zcount(*alive_range(model)))


def queue_workers_alive(pipe: Any, *, model: str) -> None:
    """Add ``workers_alive``'s command to a pipeline of ``REDIS_URL``'s server (its reply: the count)."""
    pipe.zcount(*alive_range(model))


def alive_range(model: str) -> tuple[str, float, str]:
    """``ZCOUNT``'s arguments for the workers of ``model`` alive now."""
    return heartbeat_key(model), time.time() - settings.LLM_HEARTBEAT_TTL, "+inf"
