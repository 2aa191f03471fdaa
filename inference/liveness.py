"""Which models have a live worker, and what each worker runs: a heartbeat per worker in Redis.

Each worker, once its engine is ready, refreshes its entry in the sorted set
``llm:workers:<model>`` (member: the worker's id, score: unix time) every
``LLM_HEARTBEAT_INTERVAL`` seconds and removes it when it stops
(``workers.heartbeat``). An entry older than ``LLM_HEARTBEAT_TTL`` is a
worker that died without saying so. The API asks ``workers_alive`` (one
ZCOUNT) before it queues a job that nobody would run; a Celery ping would
cost a broadcast round trip and a timeout on every request.

With the same beat a worker writes ``llm:worker:<id>``: when it beat and the
jobs it holds (from before their claim to the end of their delivery). A
worker's id is the one its jobs carry in their ``worker`` field, so the
reconciler can tell a running job whose worker died (its beat lapsed) from one
its live worker no longer runs (the job missing from a beat taken after the
job's claim).

A worker that serves metrics also keeps its address in the hash
``llm:worker-metrics`` (field: its id), refreshed with each beat: the web
process answers Prometheus's service discovery from it (``metrics_targets``),
for the workers alive now. ``/readyz`` asks ``workers_check``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from django.conf import settings

from inference import registry
from llmproject.redis_client import redis_client, sync_redis_client

METRICS_ADDRESSES_KEY = "llm:worker-metrics"
# The reconcilers that serve metrics, as a model's workers are in heartbeat_key.
RECONCILERS_KEY = "llm:reconcilers"

logger = logging.getLogger(__name__)


def heartbeat_key(model: str) -> str:
    """The sorted set of ``model``'s workers and their last beats."""
    return f"llm:workers:{model}"


def worker_key(worker: str) -> str:
    """A worker's last beat and the jobs it held then."""
    return f"llm:worker:{worker}"


@dataclass(frozen=True, slots=True)
class Beat:
    """A worker's last beat: when (unix time, the worker's clock) and the jobs it held."""

    at: float
    jobs: frozenset[int]

    def dumps(self) -> str:
        return json.dumps({"at": self.at, "jobs": sorted(self.jobs)})

    @classmethod
    def loads(cls, raw: str) -> Beat:
        data = json.loads(raw)
        return cls(at=float(data["at"]), jobs=frozenset(int(j) for j in data["jobs"]))


def beats_read(client: Any, workers: Iterable[str]) -> dict[str, Beat | None]:
    """The last beat of each of ``workers`` (None: none on record), with a blocking
    client of ``REDIS_URL``'s server: one MGET."""
    names = list(dict.fromkeys(workers))
    if not names:
        return {}
    raws = client.mget([worker_key(name) for name in names])
    return {name: None if raw is None else Beat.loads(raw) for name, raw in zip(names, raws, strict=True)}


async def workers_alive(*, model: str) -> int:
    """How many workers of ``model`` have beaten within the TTL."""
    return int(await redis_client().zcount(*alive_range(model)))


def workers_alive_by_model(*, models: list[str]) -> dict[str, int]:
    """``workers_alive`` of each of ``models``, in one round trip, from synchronous code (a
    listing of the models); empty when Redis cannot say (the caller shows "unknown":
    this is for display, not admission)."""
    try:
        with sync_redis_client().pipeline(transaction=False) as pipe:
            for model in models:
                queue_workers_alive(pipe, model=model)
            counts = pipe.execute()
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not read the workers' heartbeats: %s", exc)
        return {}
    return {model: int(count) for model, count in zip(models, counts, strict=True)}


def queue_workers_alive(pipe: Any, *, model: str) -> None:
    """Add ``workers_alive``'s command to a pipeline of ``REDIS_URL``'s server (its reply: the count)."""
    pipe.zcount(*alive_range(model))


def alive_range(model: str) -> tuple[str, float, str]:
    """``ZCOUNT``'s arguments for the workers of ``model`` alive now."""
    return heartbeat_key(model), time.time() - settings.LLM_HEARTBEAT_TTL, "+inf"


def queue_metrics_address(pipe: Any, *, member: str, model: str, address: str) -> None:
    """Add a worker's metrics address to a pipeline (with its heartbeat)."""
    pipe.hset(METRICS_ADDRESSES_KEY, member, json.dumps({"model": model, "address": address}))


def queue_forget_metrics_address(pipe: Any, *, member: str) -> None:
    pipe.hdel(METRICS_ADDRESSES_KEY, member)


async def workers_check() -> dict[str, Any]:
    """Readiness: at least one live worker for each model of the registry (one round trip)."""
    names = sorted(registry.models())
    async with redis_client().pipeline(transaction=False) as pipe:
        for name in names:
            queue_workers_alive(pipe, model=name)
        counts = await pipe.execute()
    alive = {name: int(count) for name, count in zip(names, counts, strict=True)}
    down = [name for name, count in alive.items() if not count]
    return {"ok": not down, "alive": alive, "down": down}


def reconciler_beat(client: Any, *, member: str, address: str) -> None:
    """A reconciler that serves metrics says it is alive, and where (blocking client):
    ``metrics_targets`` lists it with the workers."""
    now = time.time()
    with client.pipeline(transaction=True) as pipe:
        pipe.zadd(RECONCILERS_KEY, {member: now})
        pipe.zremrangebyscore(RECONCILERS_KEY, "-inf", now - 10 * settings.LLM_HEARTBEAT_TTL)
        queue_metrics_address(pipe, member=member, model="", address=address)
        pipe.execute()


def reconciler_gone(client: Any, *, member: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(RECONCILERS_KEY, member)
        queue_forget_metrics_address(pipe, member=member)
        pipe.execute()


def metrics_targets() -> list[dict[str, Any]]:
    """The metrics addresses of the workers (and reconcilers) alive now, as Prometheus's
    HTTP service discovery wants them; those no longer alive are dropped on the way."""
    client = sync_redis_client()
    names = sorted(registry.models())
    now = time.time()
    with client.pipeline(transaction=False) as pipe:
        for name in [*(heartbeat_key(n) for n in names), RECONCILERS_KEY]:
            pipe.zrangebyscore(name, now - settings.LLM_HEARTBEAT_TTL, "+inf")
        pipe.hgetall(METRICS_ADDRESSES_KEY)
        *alive_by_model, addresses = pipe.execute()
    alive = {member for members in alive_by_model for member in members}
    targets = []
    for member, value in sorted(addresses.items()):
        if member not in alive:
            continue
        entry = json.loads(value)
        targets.append(
            {"targets": [entry["address"]], "labels": {"worker": member, "worker_model": entry["model"]}}
        )
    # Workers killed without deregistering; one that was only late registers again
    # with its next beat.
    gone = [member for member in addresses if member not in alive]
    if gone:
        client.hdel(METRICS_ADDRESSES_KEY, *gone)
    return targets
