"""CPU that operations (metrics, correlation ids) add per request and per job, in isolation.

    DJANGO_SETTINGS_MODULE=llmproject.settings .venv/bin/python bench/ops_overhead.py

Each figure is the fastest of 7 ``timeit`` runs, in microseconds per call, on
the code each path runs in addition to what it ran before:

- web, per ``/v1/`` request: the bare handler's request counter (a status
  counter and a latency histogram), the correlation id bound in the service,
  the job's publication (a disabled debug log line);
- worker, per job: the observations at claim and end, the correlation id bound
  at claim and cleared after the task, and django-prometheus's wrapper around
  each statement (two a job on PostgreSQL: the claim and the finish; measured
  as the difference between a wrapped and a plain cursor running ``SELECT 1``
  on SQLite).
"""

from __future__ import annotations

import os
import secrets
import timeit
import uuid
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")
# The settings refuse to start without a key; the servers this starts share it.
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from llmproject import logcontext, metrics  # noqa: E402
from llmproject.handlers import _RequestCounter  # noqa: E402


def per_call_us(fn: Any, number: int = 20000) -> float:
    """The fastest of 7 runs (noise from other processes only adds), per call."""
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    rows: list[tuple[str, float]] = []

    counter = _RequestCounter()
    request = SimpleNamespace(
        resolver_match=SimpleNamespace(view_name="openai-chat-completions"), method="POST"
    )
    response = SimpleNamespace(status_code=200)
    rows.append(
        (
            "web: count a /v1/ request (status, latency)",
            per_call_us(lambda: counter.observe(request, response, 0.01)),
        )
    )
    correlation = uuid.uuid4()
    rows.append(
        ("web: bind the correlation id", per_call_us(lambda: logcontext.bind(correlation=correlation)))
    )
    import logging

    dispatch_logger = logging.getLogger("conversations.dispatch")
    rows.append(
        (
            "web: disabled debug line at publish",
            per_call_us(lambda: dispatch_logger.debug("job %s published to %s", 1, "llm.echo")),
        )
    )

    now = timezone.now()
    queued, first = now - timedelta(seconds=0.2), now - timedelta(seconds=0.15)

    def job_metrics() -> None:
        metrics.job_claimed(model="echo", queued_at=queued, claimed_at=now - timedelta(seconds=0.19))
        metrics.job_answered(
            model="echo",
            cancelled=False,
            queued_at=queued,
            first_token_at=first,
            finished_at=now,
            prompt_tokens=12,
            completion_tokens=64,
        )

    rows.append(("worker: observations at claim and end", per_call_us(job_metrics)))

    from workers.signals import unbind_correlation_id

    def bound_and_cleared() -> None:
        logcontext.bind_job(job_id=1, correlation_id=correlation)
        unbind_correlation_id()

    rows.append(("worker: correlation id bound at claim, cleared after", per_call_us(bound_and_cleared)))

    connection.ensure_connection()
    wrapped = connection.cursor()
    # The same statement through Django's cursor wrapper around sqlite3's own cursor.
    from django.db.backends.sqlite3.base import SQLiteCursorWrapper

    plain = connection.connection.cursor(factory=SQLiteCursorWrapper)
    from django.db.backends.utils import CursorWrapper

    bare_django = CursorWrapper(plain, connection)
    t_wrapped = per_call_us(lambda: wrapped.execute("SELECT 1"), number=5000)
    t_django = per_call_us(lambda: bare_django.execute("SELECT 1"), number=5000)
    rows.append(("worker: django-prometheus's wrapper, per statement", t_wrapped - t_django))

    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:6.2f} us")


if __name__ == "__main__":
    main()
