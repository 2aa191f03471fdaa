"""The worker side of a job: one delivery, claimed, generated on this process's engine,
stored (or failed, or handed back for a retry). Called by the Celery task."""

from __future__ import annotations

import logging
import time
import traceback

import redis.exceptions
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from conversations.answers import Answer, answer_stash, answer_timings, answer_unstash
from conversations.lifecycle import job_announce, job_claim, job_fail, job_finish, job_release
from conversations.models import InferenceJob
from conversations.storage.claim import Claim
from inference.breaker import breaker_record_failure, breaker_record_success
from inference.engines.base import EngineError
from inference.requests import GenerationRequest, SamplingParams
from workers import runtime
from workers.generation import GenerationResult

logger = logging.getLogger(__name__)

# After a failed store a delivery retries it for this long (backoff 0.25 s doubling to
# 2 s), then leaves its stashed answer to the reconciler. A pooled connection the
# database dropped fails at once and the next one works: most blips end here.
STORE_RETRY_SECONDS = 10.0


class TransientJobError(Exception):
    """The job failed in a way a later attempt may not: Celery retries it with backoff."""


class JobInterrupted(Exception):
    """The worker stopped mid-job; the job is queued again and its message must be requeued."""


def job_run(*, job_id: int) -> None:
    """Run one delivery of a job on this worker's engine (claimed in the name of the
    worker's ``worker_id``).

    Raises ``TransientJobError`` for failures worth retrying (the claim is
    released first) and ``JobInterrupted`` when the worker shuts down
    mid-answer; records permanent failures, and a transient one on the last
    attempt, and returns.

    The job is held (in this worker's heartbeat) from before its claim to the
    end of the delivery: a job left running that its worker no longer holds is
    the reconciler's to finish.
    """
    host = runtime.current_host()
    with host.held.hold(job_id):
        _run(job_id=job_id, host=host)


def _run(*, job_id: int, host: runtime.EngineHost) -> None:
    claim = job_claim(job_id=job_id, worker=host.worker_id)
    if claim is None:
        return
    job = claim.job
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
    answer = _answer(claim, result)
    if _store(claim=claim, answer=answer):
        breaker_record_success(model=job.model)
        job_announce(claim=claim, answer=answer)


def _answer(claim: Claim, result: GenerationResult) -> Answer:
    message = claim.job.message
    return Answer(
        text=result.text,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        first_token_at=result.first_token_at,
        finished_at=result.finished_at,
        timings=answer_timings(
            queued_at=message.queued_at,
            started_at=message.started_at,
            first_token_at=result.first_token_at,
            finished_at=result.finished_at,
        ),
    )


def _store(*, claim: Claim, answer: Answer) -> bool:
    """Store ``answer``; True if it was stored by this call (False: superseded, or left to
    the reconciler after ``STORE_RETRY_SECONDS`` of database errors).

    A Celery retry cannot do this: its claim sees the job running, young, and
    drops it, and the text is gone (what a database blip did to 58 of 60 answers
    in flight). So the delivery keeps its claim and retries the store itself,
    with the answer stashed in Redis in case it gives up or dies.
    """
    job_id, attempt = claim.job.pk, claim.attempt
    try:
        return job_finish(claim=claim, answer=answer)
    except (OperationalError, InterfaceError) as exc:
        logger.warning("job %s: storing the answer failed (%s); stashing it and retrying", job_id, exc)
    stashed = answer_stash(job_id=job_id, attempt=attempt, answer=answer)
    deadline = time.monotonic() + STORE_RETRY_SECONDS
    delay = 0.25
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(2 * delay, 2.0)
        connection.close()  # a broken connection goes back to the pool, which drops it
        try:
            stored = job_finish(claim=claim, answer=answer)
        except (OperationalError, InterfaceError):
            continue
        if stashed:
            answer_unstash(job_id=job_id, attempt=attempt)
        return stored
    connection.close()
    logger.error(
        "job %s: could not store its answer for %.0f s; %s",
        job_id,
        STORE_RETRY_SECONDS,
        "the reconciler stores it from its stash"
        if stashed
        else "nothing kept it (Redis failed too): the reconciler runs it again",
    )
    return False


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
