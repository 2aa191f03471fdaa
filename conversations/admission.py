"""Whether a model can take one more job now, decided and reserved in one atomic step.

Asked before a job is stored, so a request that nobody would serve soon is
refused at once, before any database work (503 / 429 with ``Retry-After``),
instead of waiting in a queue until its client gives up:

- a live worker (``inference.liveness``; the OpenAI API asks, the REST API's
  jobs may wait for one);
- the model's circuit breaker not open (``inference.breaker``); while it is,
  the registry's ``fallback`` model, if any, is asked instead;
- room in its queue: fewer than ``LLM_MAX_QUEUED_PER_MODEL`` jobs waiting.

One Lua script answers all three and, if the answer is yes, *reserves* a
place: the queue's lists (kombu keeps one per priority step) count only jobs
already published, and a job is published milliseconds after it is admitted,
once its rows are stored. Reading the lengths and publishing later let a
burst through whole (500 simultaneous requests all admitted, 436 queued over
a limit of 256). So an admitted request holds a reservation (a member of a
sorted set beside the queue, scored by time) until its job is in the list
(``Admission.release``); a reservation whose request died is dropped after
``RESERVATION_SECONDS``. One round trip, as the two reads it replaces.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from dataclasses import dataclass

import redis.exceptions
from django.conf import settings

from inference import liveness, registry
from inference.breaker import breaker_key
from inference.registry import ModelSpec
from llmproject.exceptions import ServiceUnavailable, TooManyRequests
from llmproject.redis_client import LuaScript, redis_client, sync_redis_client

PRIORITY_STEPS = range(10)
# Longest a request may take from admission to its job's publication before its
# reservation is dropped (its process died, say): well above a store's worst case.
RESERVATION_SECONDS = 30

# KEYS: heartbeats (sorted set), breaker (hash), reservations (sorted set), the
# queue's lists. ARGV: now, heartbeat TTL (-1: do not ask, the caller knows the
# live workers are ARGV[8]), queue limit, reservation token, RESERVATION_SECONDS,
# LLM_BREAKER_RESET, need a live worker (1/0), live workers.
# Returns {verdict, n}: {"ok", backlog, trial (1 if this request is the breaker's
# half-open trial)}, {"no_worker", 0}, {"open", seconds to wait}, {"full", backlog}.
_ADMIT = LuaScript("""
local now = tonumber(ARGV[1])
local alive = tonumber(ARGV[8])
if tonumber(ARGV[2]) >= 0 then
  alive = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
end
if alive == 0 and ARGV[7] == '1' then
  return {'no_worker', 0}
end
local trial = 0
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'open' or state == 'half_open' then
  local ready = tonumber(redis.call('HGET', KEYS[2], 'since')) + tonumber(ARGV[6])
  if now < ready then
    return {'open', math.ceil(ready - now)}
  end
  trial = 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))
local backlog = redis.call('ZCARD', KEYS[3])
for i = 4, #KEYS do
  backlog = backlog + redis.call('LLEN', KEYS[i])
end
if backlog >= tonumber(ARGV[3]) then
  return {'full', backlog}
end
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[5])
if trial == 1 then
  redis.call('HSET', KEYS[2], 'state', 'half_open', 'since', ARGV[1])
end
return {'ok', backlog, trial}
""")

_tokens = itertools.count()
_PROCESS = f"{socket.gethostname()}:{os.getpid()}"


def queue_keys(spec: ModelSpec) -> list[str]:
    """The Redis lists kombu keeps a queue in: one per priority step (``<queue><sep><step>``,
    step 0 without a suffix)."""
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", "\x06\x16")
    return [spec.queue if step == 0 else f"{spec.queue}{sep}{step}" for step in PRIORITY_STEPS]


def _reservations_key(spec: ModelSpec) -> str:
    return f"llm:admitting:{spec.name}"


async def queue_backlog(*, spec: ModelSpec) -> int:
    """Jobs waiting in ``spec``'s queue that no worker has taken yet.

    Precondition: the broker is Redis.
    """
    async with redis_client(settings.CELERY_BROKER_URL).pipeline(transaction=False) as pipe:
        for key in queue_keys(spec):
            pipe.llen(key)
        lengths = await pipe.execute()
    return sum(int(n) for n in lengths)


@dataclass(frozen=True, slots=True)
class Admission:
    """A place reserved in ``spec``'s queue (``spec`` may be the asked model's fallback)."""

    spec: ModelSpec
    token: str

    def release(self) -> None:
        """The job is published (or will never be): give the reservation back. Never raises:
        a reservation left behind expires."""
        try:
            sync_redis_client(settings.CELERY_BROKER_URL).zrem(_reservations_key(self.spec), self.token)
        except (redis.exceptions.RedisError, OSError):
            pass


def _call(spec: ModelSpec, *, need_worker: bool) -> tuple[list[str], list[object]]:
    """The admission script's keys and arguments. Heartbeats are counted in the script when
    they share the broker's Redis (the default); else the caller counts them first."""
    token = f"{_PROCESS}:{next(_tokens)}"
    same_server = settings.CELERY_BROKER_URL == settings.REDIS_URL
    keys = [liveness.heartbeat_key(spec.name), breaker_key(spec.name), _reservations_key(spec)]
    args: list[object] = [
        time.time(),
        settings.LLM_HEARTBEAT_TTL if same_server else -1,
        settings.LLM_MAX_QUEUED_PER_MODEL,
        token,
        RESERVATION_SECONDS,
        settings.LLM_BREAKER_RESET,
        1 if need_worker else 0,
        1,  # live workers, when the script does not count them
    ]
    return keys + queue_keys(spec), args


class BreakerOpen(ServiceUnavailable):
    code = "model_unavailable"


def _verdict(spec: ModelSpec, token: str, result: list[object]) -> Admission:
    """The admission; raises the refusal."""
    verdict, number = str(result[0]), int(result[1])  # type: ignore[call-overload]
    if verdict == "ok":
        return Admission(spec=spec, token=token)
    if verdict == "no_worker":
        raise ServiceUnavailable(
            f"no worker is serving model {spec.name!r} right now; try again later",
            code="no_worker",
            retry_after=10,
        )
    if verdict == "open":
        raise BreakerOpen(
            f"model {spec.name!r} is failing (its circuit breaker is open); try again in {number} s",
            retry_after=max(1, number),
        )
    raise TooManyRequests(
        f"model {spec.name!r} is overloaded ({number} requests waiting); try again shortly",
        code="overloaded",
        retry_after=2,
    )


_QUEUE_UNAVAILABLE = "the job queue is unavailable right now; try again shortly"


async def _admit(spec: ModelSpec, *, need_worker: bool) -> Admission:
    keys, args = _call(spec, need_worker=need_worker)
    try:
        if args[1] == -1 and need_worker:
            args[7] = await liveness.workers_alive(model=spec.name)
        result = await _ADMIT.run_async(redis_client(settings.CELERY_BROKER_URL), keys, args)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ServiceUnavailable(_QUEUE_UNAVAILABLE, retry_after=5) from exc
    return _verdict(spec, str(args[3]), result)


def _admit_sync(spec: ModelSpec, *, need_worker: bool) -> Admission:
    keys, args = _call(spec, need_worker=need_worker)
    try:
        if args[1] == -1 and need_worker:
            args[7] = sync_redis_client().zcount(*liveness.alive_range(spec.name))
        result = _ADMIT.run(sync_redis_client(settings.CELERY_BROKER_URL), keys, args)
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ServiceUnavailable(_QUEUE_UNAVAILABLE, retry_after=5) from exc
    return _verdict(spec, str(args[3]), result)


async def model_admit(*, spec: ModelSpec, need_worker: bool = True) -> Admission:
    """Reserve a place for one job of ``spec`` (or of its fallback while its breaker is
    open); the caller ``release()``s it once the job is published or has failed.

    Raises ``ServiceUnavailable`` (no live worker, breaker open and no fallback
    open to take it, Redis unreachable) or ``TooManyRequests``
    (``LLM_MAX_QUEUED_PER_MODEL`` jobs waiting).
    """
    try:
        return await _admit(spec, need_worker=need_worker)
    except BreakerOpen as refusal:
        if spec.fallback is None:
            raise
        try:
            return await _admit(registry.models()[spec.fallback], need_worker=need_worker)
        except BreakerOpen:
            raise refusal from None


def model_admit_sync(*, spec: ModelSpec, need_worker: bool = False) -> Admission:
    """``model_admit`` for synchronous code (the REST API's views run in a thread). The
    REST API's jobs may wait for a worker: by default a live one is not required."""
    try:
        return _admit_sync(spec, need_worker=need_worker)
    except BreakerOpen as refusal:
        if spec.fallback is None:
            raise
        try:
            return _admit_sync(registry.models()[spec.fallback], need_worker=need_worker)
        except BreakerOpen:
            raise refusal from None
