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

import logging
import time
from typing import Any

import redis.exceptions
from django.conf import settings

from llmproject.redis_client import redis_client

logger = logging.getLogger(__name__)


def heartbeat_key(model: str) -> str:
    """The sorted set of ``model``'s workers and their last beats."""
    return f"llm:workers:{model}"


async def workers_alive(*, model: str) -> int:
    """How many workers of ``model`` have beaten within the TTL."""
    return int(await redis_client().zcount(*_alive_range(model)))


async def workers_alive_by_model(*, models: list[str]) -> dict[str, int]:
    """``workers_alive`` of each of ``models``, in one round trip; empty when Redis cannot
    say (the caller shows "unknown": this is for display, not admission)."""
    try:
        async with redis_client().pipeline(transaction=False) as pipe:
            for model in models:
                queue_workers_alive(pipe, model=model)
            counts = await pipe.execute()
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not read the workers' heartbeats: %s", exc)
        return {}
    return {model: int(count) for model, count in zip(models, counts, strict=True)}


def queue_workers_alive(pipe: Any, *, model: str) -> None:
    """Add ``workers_alive``'s command to a pipeline of ``REDIS_URL``'s server (its reply: the count)."""
    pipe.zcount(*_alive_range(model))


def _alive_range(model: str) -> tuple[str, float, str]:
    return heartbeat_key(model), time.time() - settings.LLM_HEARTBEAT_TTL, "+inf"
