"""Per-process setup of a model worker, wired to Celery's worker signals.

``run_workers`` starts each worker with ``LLM_WORKER_MODEL`` set (and, for a
group of several GPUs, ``LLM_TENSOR_PARALLEL_SIZE``). On
``worker_init`` (before the pool starts or anything is consumed) the process
builds that model's engine; if the engine cannot start, the worker exits with
the reason instead of failing task after task. On ``worker_shutdown`` the
engine is shut down, or its processes would outlive the worker.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from celery.signals import task_postrun, worker_init, worker_shutdown, worker_shutting_down
from celery.worker.control import control_command, inspect_command
from django.conf import settings

from llmproject import logcontext

if TYPE_CHECKING:
    from inference.registry import ModelSpec

logger = logging.getLogger(__name__)

WORKER_MODEL_ENV = "LLM_WORKER_MODEL"
TENSOR_PARALLEL_ENV = "LLM_TENSOR_PARALLEL_SIZE"
# Exit status of a worker whose engine could not start (EX_CONFIG).
EXIT_ENGINE_FAILED = 78


def worker_model_spec(environ: Mapping[str, str]) -> ModelSpec | None:
    """The model a worker started with ``environ`` serves, as its engine runs it: across
    its GPU group with tensor parallelism. None if the model is not in the registry."""
    from inference import registry

    spec = registry.get_model(environ.get(WORKER_MODEL_ENV, ""))
    if spec is None:
        return None
    return spec.for_gpu_group(int(environ.get(TENSOR_PARALLEL_ENV) or 1))


@worker_init.connect
def start_engine(sender: Any = None, **kwargs: Any) -> None:
    model = os.environ.get(WORKER_MODEL_ENV)
    if not model:
        return
    from workers import runtime
    from workers.broker import redis_transport_survive_reconnects

    redis_transport_survive_reconnects()
    spec = worker_model_spec(os.environ)
    if spec is None:
        logger.critical("%s=%r is not in the model registry", WORKER_MODEL_ENV, model)
        sys.exit(EXIT_ENGINE_FAILED)
    # The worker's node name (``--hostname``), known before worker_init is sent.
    nodename = getattr(sender, "hostname", None) or socket.gethostname()
    try:
        runtime.start_host(spec, nodename=nodename)
    except Exception as exc:
        logger.critical("engine for model %r could not start: %s", model, exc, exc_info=True)
        print(f"engine for model {model!r} could not start: {exc}", file=sys.stderr, flush=True)
        # SystemExit is not swallowed by Celery's signal dispatch.
        sys.exit(EXIT_ENGINE_FAILED)


@task_postrun.connect
def unbind_correlation_id(**kwargs: Any) -> None:
    """The job's claim bound its correlation id in this thread (``job_claim``): it stays
    on the task's lines up to Celery's "succeeded", then goes, before the pool's thread
    runs another job."""
    logcontext.clear()


@worker_shutting_down.connect
def bound_the_warm_shutdown(sig: str = "", how: str = "", **kwargs: Any) -> None:
    """On SIGTERM Celery stops consuming and waits for the running tasks, however long
    they take. Give them ``LLM_SHUTDOWN_GRACE`` seconds, then abort the rest: their jobs
    go back to the queue whole (``JobInterrupted`` -> ``Reject(requeue=True)``)."""
    from workers import runtime

    try:
        host = runtime.current_host()
    except RuntimeError:
        return
    grace = settings.LLM_SHUTDOWN_GRACE
    logger.warning("%s shutdown: in-flight answers get %s s to finish", how or "warm", grace)

    def abort_stragglers() -> None:
        try:
            aborted = host.abort_all("shutdown").result(10)
        except Exception:
            logger.exception("could not abort in-flight generations")
            return
        if aborted:
            logger.warning("requeued %d unfinished job(s)", aborted)

    timer = threading.Timer(grace, abort_stragglers)
    timer.daemon = True
    timer.start()


@worker_shutdown.connect
def stop_engine(sender: Any = None, **kwargs: Any) -> None:
    from workers import runtime

    runtime.stop_host()


@control_command(name="cancel_job", args=[("job_id", int)])  # type: ignore[misc]
def cancel_job(state: Any, job_id: int, **kwargs: Any) -> dict[str, Any]:
    """Broadcast by ``job_cancel``: abort the job if this worker runs it."""
    from workers import runtime

    try:
        runtime.current_host().cancel_job(int(job_id))
    except RuntimeError:
        return {"ok": "no engine here"}
    return {"ok": "cancel requested"}


@inspect_command(name="engine_stats", args=[("reset", bool)])  # type: ignore[misc]
def engine_stats(state: Any, reset: bool = False, **kwargs: Any) -> dict[str, Any]:
    """``celery -A llmproject inspect engine_stats``: the engine's counters (``reset`` zeroes them)."""
    from workers import runtime

    try:
        host = runtime.current_host()
    except RuntimeError:
        return {}
    stats: dict[str, Any] = {"model": host.spec.name}
    stats.update(host.engine_stats(reset=reset))
    if host.publisher is not None:
        stats["stream_batches"] = host.publisher.batches
        stats["stream_events"] = host.publisher.events
    return stats
