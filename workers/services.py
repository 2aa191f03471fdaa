"""The worker side of a job: one delivery, claimed, generated on this process's engine,
stored (or failed, or handed back for a retry). Called by the Celery task."""

from __future__ import annotations

import logging
import traceback
from datetime import timedelta

import redis.exceptions
from django.conf import settings
from django.db import connection
from django.utils import timezone

from conversations.lifecycle import job_claim, job_fail, job_finish, job_release
from conversations.models import InferenceJob, Message
from conversations.storage.claim import Claim
from conversations.streams.events import StreamEvent, Timings
from conversations.streams.push import push_event
from inference.breaker import breaker_record_failure, breaker_record_success
from inference.engines.base import EngineError
from inference.requests import GenerationRequest, SamplingParams
from workers import runtime
from workers.generation import GenerationResult

logger = logging.getLogger(__name__)


class TransientJobError(Exception):
    """The job failed in a way a later attempt may not: Celery retries it with backoff."""


class JobInterrupted(Exception):
    """The worker stopped mid-job; the job is queued again and its message must be requeued."""


def job_run(*, job_id: int, worker: str) -> None:
    """Run one delivery of a job on this worker's engine.

    Raises ``TransientJobError`` for failures worth retrying (the claim is
    released first) and ``JobInterrupted`` when the worker shuts down
    mid-answer; records permanent failures, and a transient one on the last
    attempt, and returns.
    """
    claim = job_claim(job_id=job_id, worker=worker)
    if claim is None:
        return
    job = claim.job
    host = runtime.current_host()
    if host.spec.name != job.model:
        job_fail(
            job_id=job.pk,
            error=f"worker serves {host.spec.name!r}, not {job.model!r}",
            error_kind=InferenceJob.ErrorKind.MISROUTED,
        )
        return
    request = GenerationRequest(
        request_id=f"job-{job.pk}-{claim.attempt}",
        messages=claim.history,
        params=SamplingParams.from_dict(job.params),
    )
    # Hand the database connection back (to the pool, if any) for the length of
    # the answer: dozens of answers stream at once on one worker, and none of
    # them needs the database until it is stored.
    connection.close()
    try:
        result, stop_reason = host.run(
            host.generate(
                job_id=job.pk,
                request=request,
                conversation_id=claim.conversation_id,
                message_id=job.message_id,
                time_limit=settings.LLM_JOB_TIME_LIMIT,
                started={
                    "event": "started",
                    "message_id": job.message_id,
                    "job_id": job.pk,
                    "attempt": claim.attempt,
                },
            )
        )
    except EngineError as exc:
        if exc.permanent:
            job_fail(
                job_id=job.pk,
                error=str(exc),
                error_kind=InferenceJob.ErrorKind.PERMANENT,
                traceback=_traceback(exc),
                attempt=claim.attempt,
            )
        else:
            # The engine failing (not the request): the model's breaker counts it.
            breaker_record_failure(model=job.model, error=str(exc))
            _retry_or_fail(claim=claim, error=str(exc), kind=InferenceJob.ErrorKind.TRANSIENT, cause=exc)
        return
    except TimeoutError as exc:
        job_fail(
            job_id=job.pk,
            error=f"the answer took longer than the {settings.LLM_JOB_TIME_LIMIT} s limit",
            error_kind=InferenceJob.ErrorKind.TIMEOUT,
            traceback=_traceback(exc),
            attempt=claim.attempt,
        )
        return
    except redis.exceptions.ConnectionError as exc:
        _retry_or_fail(
            claim=claim,
            error=f"lost Redis while streaming: {exc}",
            kind=InferenceJob.ErrorKind.STREAM,
            cause=exc,
        )
        return

    if stop_reason == "shutdown":
        # The worker is stopping: hand the job back whole, without using up an attempt.
        job_release(
            claim=claim,
            error="the worker shut down during the answer",
            error_kind=InferenceJob.ErrorKind.SHUTDOWN,
            count_attempt=False,
        )
        raise JobInterrupted(f"job {job.pk} interrupted by worker shutdown")
    stored = job_finish(
        claim=claim,
        text=result.text,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        first_token_at=result.first_token_at,
        finished_at=result.finished_at,
    )
    if not stored:
        return
    breaker_record_success(model=job.model)
    if result.finish_reason == "abort":
        event: StreamEvent = {"event": "cancelled", "message_id": job.message_id, "content": result.text}
    else:
        event = {
            "event": "completed",
            "message_id": job.message_id,
            "content": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "timings": _timings(job.message, result),
        }
    try:
        push_event(claim.conversation_id, event)
    except (redis.exceptions.RedisError, OSError):
        # The answer is stored; clients read it from the conversation.
        logger.exception("could not push the end of job %s", job.pk)


def _retry_or_fail(*, claim: Claim, error: str, kind: InferenceJob.ErrorKind, cause: Exception) -> None:
    """After a transient failure: fail the job on its last attempt (and return), or give it
    back and raise ``TransientJobError`` for Celery to retry it."""
    if claim.attempt >= claim.job.max_attempts:
        job_fail(
            job_id=claim.job.pk,
            error=f"{error} (gave up after {claim.attempt} attempts)",
            error_kind=kind,
            traceback=_traceback(cause),
            attempt=claim.attempt,
        )
        return
    job_release(claim=claim, error=error, error_kind=kind, traceback=_traceback(cause))
    raise TransientJobError(error) from cause


def _traceback(exc: BaseException) -> str:
    """The failure's traceback as operators read it in the admin (failures only: not free)."""
    return "".join(traceback.format_exception(exc))


def _ms(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds() * 1000, 1)


def _timings(message: Message, result: GenerationResult) -> Timings:
    started = message.started_at or timezone.now()
    return {
        "queued_ms": _ms(started - message.queued_at) if message.queued_at else None,
        "time_to_first_token_ms": _ms(result.first_token_at - message.queued_at)
        if result.first_token_at and message.queued_at
        else None,
        "generation_ms": _ms(result.finished_at - started),
    }
