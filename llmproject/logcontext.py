"""The request's correlation id (and job id) on every log record, from the request to the worker.

A request's correlation id is made when it is stored (``conversations.services``),
travels with its job (a column), and is on every event of the conversation's
event log. Bound here in a context variable, by the service that makes it and
by the worker's claim of the job (``conversations.lifecycle.job_claim``), it
reaches every log line written for that request in between: a
``sync_to_async`` call hands the variable back to the view; the worker's
engine loop runs each generation in a copy of its task thread's context
(``asyncio.run_coroutine_threadsafe``); the task's thread is cleared after it
(``workers.signals``). The id is kept as given and turned into text only for a
line that is written (``str`` of a UUID is 1.5 us: most requests log nothing).
So one id finds a request's whole story: its log lines (``LOG_FORMAT=json``:
a ``correlation_id`` field), its events, its job.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

_correlation_id: contextvars.ContextVar[uuid.UUID | str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)
_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("job_id", default=None)


def bind(*, correlation: uuid.UUID | str | None) -> None:
    """Log what follows in this context under ``correlation``."""
    _correlation_id.set(correlation or None)


def bind_job(*, job_id: int, correlation_id: uuid.UUID | str | None) -> None:
    _job_id.set(job_id)
    bind(correlation=correlation_id)


def current() -> str | None:
    """The correlation id bound in this context."""
    value = _correlation_id.get()
    return None if value is None else str(value)


def clear() -> None:
    _correlation_id.set(None)
    _job_id.set(None)


class ContextFilter(logging.Filter):
    """Puts ``correlation_id`` and ``job_id`` on every record (``-`` when unbound), for
    both formats' ``%(correlation_id)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        value = _correlation_id.get()
        record.correlation_id = "-" if value is None else str(value)
        record.job_id = _job_id.get() or "-"
        return True
