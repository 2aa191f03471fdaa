"""A circuit breaker per model, shared by every web and worker process through Redis.

After ``LLM_BREAKER_FAILURES`` engine failures of a model in a row (no job of
it succeeding in between), its breaker *opens*: the API refuses its new
requests at once, 503 with ``Retry-After``, instead of queueing jobs that
would fail too (or sends them to the model's ``fallback``, if the registry
names one). ``LLM_BREAKER_RESET`` seconds later one request is let through
(*half-open*): if its job succeeds the breaker closes, if it fails it opens
again; if no outcome comes within another ``LLM_BREAKER_RESET`` seconds (the
job was cancelled, say), the next request is the trial.

What counts: a delivery that failed with a *transient* engine error (the
engine died, was overloaded, ended a request with an error), recorded by the
worker (``workers.services``); a success anywhere closes the breaker.
Permanent engine errors are the request's own (a prompt over the window,
parameters the engine refuses): counting them would let one client open a
model's breaker for everyone.

State: a hash ``llm:breaker:<model>`` in the broker's Redis, beside the
model's queue (no hash: closed). The API's admission reads it and takes the
half-open trial in the same Lua script that reserves a place in the queue
(``conversations.admission``): one round trip, atomic across processes.

Why not pybreaker (1.4.1, checked): its ``CircuitRedisStorage`` reads and
writes the state with separate blocking commands (no atomic transition
between processes, and a blocking client on the web's event loop), lets
every concurrent call through while half-open, and expects the process that
makes a call to see its outcome, where here the web admits a job and a
worker reports how it ended, minutes later.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.exceptions
from django.conf import settings

from llmproject.redis_client import LuaScript, redis_client, sync_redis_client

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# An idle model's breaker is forgotten after a day.
_KEY_TTL = 86_400


def breaker_key(model: str) -> str:
    return f"llm:breaker:{model}"


# One failure: count it; open the breaker at the threshold, or at once if it was
# half-open (the trial failed). Returns 1 if this failure opened it.
_FAILURE = LuaScript("""
local state = redis.call('HGET', KEYS[1], 'state')
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[3], 'last_failure_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if state == 'half_open' or (state ~= 'open' and failures >= tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'since', ARGV[1])
  return 1
end
return 0
""")


def _client() -> redis.Redis:
    return sync_redis_client(settings.CELERY_BROKER_URL)


def breaker_record_failure(*, model: str, error: str) -> bool:
    """Count an engine failure of ``model``; True if it opened the breaker. Never raises
    (Redis away: the failure is not counted, and logged)."""
    if settings.LLM_BREAKER_FAILURES <= 0:
        return False
    try:
        opened = _FAILURE.run(
            _client(),
            [breaker_key(model)],
            [time.time(), settings.LLM_BREAKER_FAILURES, error[:500], _KEY_TTL],
        )
    except (redis.exceptions.RedisError, OSError):
        logger.warning("could not count a failure of model %s in its breaker", model, exc_info=True)
        return False
    if opened:
        logger.error(
            "circuit breaker of model %s opened after engine failures (last: %s); new requests are "
            "refused for %s s",
            model,
            error,
            settings.LLM_BREAKER_RESET,
        )
    return bool(opened)


def breaker_record_success(*, model: str) -> None:
    """A job of ``model`` succeeded: its breaker closes (and its count of failures in a
    row starts again). One DEL; never raises."""
    if settings.LLM_BREAKER_FAILURES <= 0:
        return
    try:
        _client().delete(breaker_key(model))
    except (redis.exceptions.RedisError, OSError):
        logger.warning("could not close the breaker of model %s", model, exc_info=True)


@dataclass(frozen=True, slots=True)
class BreakerState:
    model: str
    state: str  # closed, open or half_open
    failures: int  # engine failures in a row
    since: float | None  # unix time it opened, or its trial started
    retry_after: int  # seconds until a trial may go through (0: now)
    last_error: str


def _state(name: str, fields: dict[str, str], now: float) -> BreakerState:
    since = float(fields["since"]) if "since" in fields else None
    state = fields.get("state", CLOSED)
    wait = since + settings.LLM_BREAKER_RESET - now if since is not None and state != CLOSED else 0
    return BreakerState(
        model=name,
        state=state,
        failures=int(fields.get("failures", 0)),
        since=since,
        retry_after=max(0, math.ceil(wait)),
        last_error=fields.get("last_error", ""),
    )


def breaker_states() -> dict[str, BreakerState]:
    """Every model's breaker, for operators (the admin, metrics). One round trip."""
    from inference.registry import models

    names = sorted(models())
    with _client().pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(breaker_key(name))
        raw = pipe.execute()
    now = time.time()
    return {name: _state(name, fields, now) for name, fields in zip(names, raw, strict=True)}


async def breakers_check() -> dict[str, Any]:
    """For ``/readyz`` (``HEALTH_CHECKS``): the models whose breaker is not closed. Always
    ``ok``: a web process serves every other model, and answers this one's requests
    itself (503, or its fallback); taking it out of a load balancer would refuse them all."""
    from inference.registry import models

    names = sorted(models())
    async with redis_client(settings.CELERY_BROKER_URL).pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(breaker_key(name))
        raw = await pipe.execute()
    now = time.time()
    states = [_state(name, fields, now) for name, fields in zip(names, raw, strict=True)]
    return {
        "ok": True,
        "not_closed": {
            s.model: {"state": s.state, "retry_after": s.retry_after} for s in states if s.state != CLOSED
        },
    }


# As a number, for Prometheus: 0 closed, 1 half-open, 2 open.
_LEVELS = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class BreakerCollector:
    """A ``prometheus_client`` collector (``METRICS_COLLECTORS``): every model's breaker,
    read from Redis when ``/metrics`` is scraped (the state is shared by all processes,
    so no process's own gauge would be right)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        state = GaugeMetricFamily(
            "llm_circuit_breaker_state",
            "A model's circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["model"],
        )
        failures = GaugeMetricFamily(
            "llm_circuit_breaker_failures", "Engine failures of the model in a row.", labels=["model"]
        )
        for breaker in breaker_states().values():
            state.add_metric([breaker.model], _LEVELS.get(breaker.state, 0))
            failures.add_metric([breaker.model], breaker.failures)
        yield state
        yield failures
