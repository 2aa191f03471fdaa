"""The Celery task of a model worker: thin, takes the job's id, calls one service.

Published by name (``conversations.dispatch.RUN_JOB_TASK``): only workers
import this module.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject
from django.conf import settings
from django.db import InterfaceError, OperationalError

from conversations.dispatch import RUN_JOB_TASK
from conversations.lifecycle import job_fail
from conversations.models import InferenceJob
from workers.services import JobInterrupted, TransientJobError, job_run

logger = logging.getLogger(__name__)


class InferenceTask(Task):  # type: ignore[misc]
    # Only failures a later attempt can fix are retried: a transient engine
    # error, a dropped database connection. Exponential backoff with jitter.
    autoretry_for = (TransientJobError, OperationalError, InterfaceError)
    retry_backoff = settings.LLM_RETRY_BACKOFF
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = settings.LLM_MAX_ATTEMPTS - 1
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Retries exhausted or an unexpected error: record the failure for operators and the user."""
        job_id = args[0] if args else kwargs.get("job_id")
        if isinstance(exc, TransientJobError):
            error = f"{exc} (gave up after {self.request.retries + 1} attempts)"
            kind = InferenceJob.ErrorKind.TRANSIENT
        else:
            error = f"internal error: {type(exc).__name__}: {exc}"
            kind = InferenceJob.ErrorKind.INTERNAL
        logger.error("job %s failed for good: %s", job_id, error)
        job_fail(job_id=job_id, error=error, error_kind=kind, traceback=str(getattr(einfo, "traceback", "")))


@shared_task(bind=True, base=InferenceTask, name=RUN_JOB_TASK)
def run_job(self: InferenceTask, job_id: int) -> None:
    try:
        job_run(job_id=job_id)
    except JobInterrupted as exc:
        # Back to the broker, for this worker's successor or a sibling.
        raise Reject(str(exc), requeue=True) from exc
