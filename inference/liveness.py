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
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from llmproject.redis_client import redis_client


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
    return int(await redis_client().zcount(*_alive_range(model)))


def queue_workers_alive(pipe: Any, *, model: str) -> None:
    """Add ``workers_alive``'s command to a pipeline of ``REDIS_URL``'s server (its reply: the count)."""
    pipe.zcount(*_alive_range(model))


def _alive_range(model: str) -> tuple[str, float, str]:
    return heartbeat_key(model), time.time() - settings.LLM_HEARTBEAT_TTL, "+inf"
