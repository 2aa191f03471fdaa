"""The platform's own Prometheus metrics (``prometheus_client``), defined in this one place.

Each process exposes its own: the web server on ``/metrics`` (beside
django-prometheus's request, database and cache families), each model worker
on a port of its own (``llmproject.exposition``). A job's numbers are
observed where a job changes state anyway, once per job, never per token:
its claim (time in queue) and its end (outcome, time to first token, time per
output token, end-to-end time, tokens), in ``conversations.lifecycle``. What
is read rather than counted (queue depth, live workers, the engine's batch)
is read when Prometheus scrapes, by collectors the settings name
(``METRICS_COLLECTORS``).

Measured (``bench/ops_overhead.py``, fastest of 7 ``timeit`` runs, on the
shared 2-core machine at a load of 6): a job's observations cost 17 to 21 us
at its claim and end together, against about 13 ms of a worker's CPU per
request (docs/benchmarks.md): 0.15 %. Each labelled child is looked up once
per model and kept: ``labels()`` costs more than the ``inc`` it serves.

Times are from when the request was stored (``Message.queued_at``), as its
user waited: a job retried after a transient error includes its earlier
attempts; an operator's retry starts a new wait.
"""

from __future__ import annotations

import functools
from datetime import datetime

import prometheus_client
from prometheus_client import Counter, Histogram

# No "<name>_created" series beside each counter and histogram: they double the
# page for a start time Prometheus does not use.
prometheus_client.disable_created_metrics()

# Seconds. A chat answer's first token comes in tens of milliseconds on an idle
# GPU and in seconds under load; a long answer takes minutes.
_WAIT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1,
    1.5,
    2,
    3,
    5,
    10,
    20,
    30,
    60,
)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                 0.2, 0.3, 0.5, 1)  # fmt: skip
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600)

JOBS = Counter(
    "llm_jobs", "Jobs that ended, by outcome (succeeded, failed, cancelled).", ["model", "outcome"]
)
FAILURES = Counter(
    "llm_job_failures", "Jobs that failed for good, by the kind of error.", ["model", "error_kind"]
)
RETRIES = Counter(
    "llm_job_retries", "Attempts handed back to the queue for another try.", ["model", "error_kind"]
)
QUEUE_TIME = Histogram(
    "llm_job_queue_seconds", "From the request stored to a worker's claim.", ["model"], buckets=_WAIT_BUCKETS
)
TTFT = Histogram(
    "llm_job_time_to_first_token_seconds",
    "From the request stored to the answer's first token.",
    ["model"],
    buckets=_WAIT_BUCKETS,
)
TPOT = Histogram(
    "llm_job_time_per_output_token_seconds",
    "Between output tokens after the first, per answer.",
    ["model"],
    buckets=_TPOT_BUCKETS,
)
E2E = Histogram(
    "llm_job_e2e_seconds", "From the request stored to the answer stored.", ["model"], buckets=_E2E_BUCKETS
)
PROMPT_TOKENS = Counter("llm_prompt_tokens", "Prompt tokens of the answers stored.", ["model"])
COMPLETION_TOKENS = Counter("llm_completion_tokens", "Tokens generated in the answers stored.", ["model"])

# For the reconciler (issue 13): see reconciler_action. The circuit breakers'
# state is shared in Redis and read at scrape time (inference.breaker.BreakerCollector).
RECONCILER_ACTIONS = Counter(
    "llm_reconciler_actions", "What the job reconciler did, by kind and model.", ["kind", "model"]
)


class _ModelSeries:
    """One model's children of the per-model families (``labels()`` costs about 1 us a call)."""

    __slots__ = (
        "cancelled",
        "completion_tokens",
        "e2e",
        "prompt_tokens",
        "queue_time",
        "succeeded",
        "tpot",
        "ttft",
    )

    def __init__(self, model: str) -> None:
        self.succeeded = JOBS.labels(model, "succeeded")
        self.cancelled = JOBS.labels(model, "cancelled")
        self.queue_time = QUEUE_TIME.labels(model)
        self.ttft = TTFT.labels(model)
        self.tpot = TPOT.labels(model)
        self.e2e = E2E.labels(model)
        self.prompt_tokens = PROMPT_TOKENS.labels(model)
        self.completion_tokens = COMPLETION_TOKENS.labels(model)


@functools.cache
def _series(model: str) -> _ModelSeries:
    return _ModelSeries(model)


def model_served(model: str) -> None:
    """A worker of ``model`` starts: its job counts exist from 0, so that Prometheus's
    ``increase()`` sees the first job of each outcome (a series that appears at 1 shows
    no increase)."""
    _series(model)
    JOBS.labels(model, "failed")


def job_claimed(*, model: str, queued_at: datetime | None, claimed_at: datetime) -> None:
    """A worker took the job for an attempt."""
    if queued_at is not None:
        _series(model).queue_time.observe((claimed_at - queued_at).total_seconds())


def job_answered(
    *,
    model: str,
    cancelled: bool,
    queued_at: datetime | None,
    first_token_at: datetime | None,
    finished_at: datetime,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """The answer (or, after a cancel, the partial answer) was stored."""
    series = _series(model)
    series.prompt_tokens.inc(prompt_tokens)
    series.completion_tokens.inc(completion_tokens)
    if cancelled:
        series.cancelled.inc()
        return  # a cut answer's times say nothing of the model's speed
    series.succeeded.inc()
    if queued_at is not None:
        series.e2e.observe((finished_at - queued_at).total_seconds())
        if first_token_at is not None:
            series.ttft.observe((first_token_at - queued_at).total_seconds())
    if first_token_at is not None and completion_tokens > 1:
        series.tpot.observe((finished_at - first_token_at).total_seconds() / (completion_tokens - 1))


def job_failed(*, model: str, error_kind: str) -> None:
    JOBS.labels(model, "failed").inc()
    FAILURES.labels(model, error_kind).inc()


def job_cancelled_queued(*, model: str) -> None:
    """Cancelled before any worker started it."""
    _series(model).cancelled.inc()


def job_retried(*, model: str, error_kind: str) -> None:
    RETRIES.labels(model, error_kind).inc()


def reconciler_action(kind: str, *, model: str, count: int = 1) -> None:
    """Count actions of the job reconciler (``requeued``, ``republished``, ``stored``,
    ``cancelled``, ``failed``, ``final_sent``, ``queue_declared``) on ``model``'s jobs.
    The reconciler serves them on a port of its own (``conversations.reconciler.loop``)."""
    RECONCILER_ACTIONS.labels(kind, model).inc(count)
