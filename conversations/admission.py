"""Whether a model can take one more job now: a live worker, and room in its queue.

Asked before a job is stored, so a request that nobody would serve soon is
refused at once (503 / 429 with ``Retry-After``) instead of waiting in a
queue until its client gives up.
"""

from __future__ import annotations

import redis.exceptions
from django.conf import settings

from inference import liveness
from inference.registry import ModelSpec
from llmproject.exceptions import ServiceUnavailable, TooManyRequests
from llmproject.redis_client import redis_client

PRIORITY_STEPS = range(10)


def queue_keys(spec: ModelSpec) -> list[str]:
    """The Redis lists kombu keeps a queue in: one per priority step (``<queue><sep><step>``,
    step 0 without a suffix)."""
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", "\x06\x16")
    return [spec.queue if step == 0 else f"{spec.queue}{sep}{step}" for step in PRIORITY_STEPS]


async def queue_backlog(*, spec: ModelSpec) -> int:
    """Jobs waiting in ``spec``'s queue that no worker has taken yet.

    Precondition: the broker is Redis.
    """
    async with redis_client(settings.CELERY_BROKER_URL).pipeline(transaction=False) as pipe:
        for key in queue_keys(spec):
            pipe.llen(key)
        lengths = await pipe.execute()
    return sum(int(n) for n in lengths)


async def _alive_and_backlog(spec: ModelSpec) -> tuple[int, int]:
    """Live workers and queue backlog of ``spec``: one round trip when the heartbeats and
    the queue share a Redis (the default), else the two questions one after the other."""
    if settings.CELERY_BROKER_URL != settings.REDIS_URL:
        alive = await liveness.workers_alive(model=spec.name)
        return alive, (await queue_backlog(spec=spec) if alive else 0)
    async with redis_client().pipeline(transaction=False) as pipe:
        liveness.queue_workers_alive(pipe, model=spec.name)
        for key in queue_keys(spec):
            pipe.llen(key)
        alive, *lengths = await pipe.execute()
    return int(alive), sum(int(n) for n in lengths)


async def model_admit(*, spec: ModelSpec) -> None:
    """Raise ``ServiceUnavailable`` if no worker of the model is alive (or Redis cannot
    say), ``TooManyRequests`` if its queue already holds ``LLM_MAX_QUEUED_PER_MODEL`` jobs."""
    try:
        alive, backlog = await _alive_and_backlog(spec)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ServiceUnavailable(
            "the job queue is unavailable right now; try again shortly", retry_after=5
        ) from exc
    if not alive:
        raise ServiceUnavailable(
            f"no worker is serving model {spec.name!r} right now; try again later",
            code="no_worker",
            retry_after=10,
        )
    if backlog >= settings.LLM_MAX_QUEUED_PER_MODEL:
        raise TooManyRequests(
            f"model {spec.name!r} is overloaded ({backlog} requests waiting); try again shortly",
            code="overloaded",
            retry_after=2,
        )
