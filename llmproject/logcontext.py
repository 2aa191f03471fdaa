"""The request's correlation id (and job id) on every log record, from the request to the worker.

A request's correlation id is made when it is stored (``conversations.services``),
travels with its job (a column, the Celery message's headers), and is on every
event of the conversation's event log. Bound here in a context variable, by
the service that makes it and by the task that runs the job, it reaches every
log line written for that request in between: a ``sync_to_async`` call hands
the variable back to the view; the worker's engine loop runs each generation
in a copy of its task thread's context (``asyncio.run_coroutine_threadsafe``).
So one id finds a request's whole story: its log lines (``LOG_FORMAT=json``:
a ``correlation_id`` field), its events, its job.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("job_id", default=None)

# The Celery message header that carries the id to the worker.
CELERY_HEADER = "llm_correlation_id"


def bind(*, correlation: uuid.UUID | str | None) -> None:
    """Log what follows in this context under ``correlation``."""
    _correlation_id.set(str(correlation) if correlation else None)


def bind_job(*, job_id: int, correlation_id: uuid.UUID | str | None) -> None:
    _job_id.set(job_id)
    bind(correlation=correlation_id)


def current() -> str | None:
    """The correlation id bound in this context."""
    return _correlation_id.get()


def clear() -> None:
    _correlation_id.set(None)
    _job_id.set(None)


class ContextFilter(logging.Filter):
    """Puts ``correlation_id`` and ``job_id`` on every record (``-`` when unbound), for
    both formats' ``%(correlation_id)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _correlation_id.get() or "-"
        record.job_id = _job_id.get() or "-"
        return True
