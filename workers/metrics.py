"""A model worker's metrics port: the worker process's own metrics, its jobs', and its
engine's batch, read when Prometheus scrapes.

Served by ``llmproject.exposition.serve_worker_metrics`` on
``LLM_WORKER_METRICS_PORT`` (``run_workers`` adds each worker's index to a
non-zero base; 0: any free port) and registered with the worker's heartbeat,
so the web process's ``/metrics/targets`` lists it for Prometheus. What this
port shows:

- everything ``prometheus_client`` holds in this process: the jobs this worker
  ran (``llmproject.metrics``), its database statements (django-prometheus),
  the process's CPU, memory and file descriptors and, with the vLLM engine,
  vLLM's own ``vllm:*`` metrics (its Prometheus stat logger, on while
  ``step_stats`` is);
- read at scrape, from the engine's counters (``Engine.stats()``, no cost per
  token or step beyond what the engine counts anyway): jobs in flight,
  sequences running and waiting, the batch size of each engine step as a
  histogram, vLLM's KV-cache usage and preemptions.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any, Protocol

from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from inference.registry import ModelSpec
from llmproject import metrics
from llmproject.exposition import serve_worker_metrics

logger = logging.getLogger(__name__)

_OFF = ("", "off", "none", "false", "no")


class EngineHost(Protocol):
    """What is read of ``workers.runtime.EngineHost`` (which imports this module)."""

    spec: ModelSpec

    @property
    def in_flight(self) -> int: ...

    def engine_stats(self) -> dict[str, Any]: ...


class EngineCollector:
    """The engine's state, read on its loop when scraped (as ``celery inspect engine_stats``)."""

    def __init__(self, host: EngineHost) -> None:
        self.host = host

    def collect(self) -> Iterator[Any]:
        host, model = self.host, self.host.spec.name
        in_flight = GaugeMetricFamily(
            "llm_jobs_in_flight", "Jobs this worker is generating.", labels=["model"]
        )
        in_flight.add_metric([model], host.in_flight)
        yield in_flight
        stats = host.engine_stats()
        if "running" in stats:
            for name, key, doc in (
                ("llm_engine_running_sequences", "running", "Sequences in the engine's batch."),
                ("llm_engine_waiting_sequences", "waiting", "Sequences waiting for a place in the batch."),
            ):
                gauge = GaugeMetricFamily(name, doc, labels=["model"])
                gauge.add_metric([model], stats[key])
                yield gauge
        if "batch_sizes" in stats:
            yield _batch_histogram(model, stats["batch_sizes"], int(stats.get("max_concurrency") or 0))
        if "kv_cache_usage" in stats:
            usage = GaugeMetricFamily(
                "llm_engine_kv_cache_usage_ratio", "vLLM's KV cache in use.", labels=["model"]
            )
            usage.add_metric([model], stats["kv_cache_usage"])
            yield usage
        if "preemptions" in stats:
            preempted = CounterMetricFamily(
                "llm_engine_preemptions", "Sequences vLLM preempted for want of KV cache.", labels=["model"]
            )
            preempted.add_metric([model], stats["preemptions"])
            yield preempted


def _batch_histogram(model: str, batch_sizes: dict[Any, int], max_concurrency: int) -> HistogramMetricFamily:
    """The engine's per-step batch sizes (a count per size) as a histogram: powers of two
    up to the engine's concurrency."""
    sizes = {int(size): count for size, count in batch_sizes.items()}
    top = max([max_concurrency, *sizes, 1])
    bounds = [1]
    while bounds[-1] < top:
        bounds.append(bounds[-1] * 2)
    buckets = [(str(b), sum(c for s, c in sizes.items() if s <= b)) for b in bounds]
    buckets.append(("+Inf", sum(sizes.values())))
    histogram = HistogramMetricFamily(
        "llm_engine_batch_size", "Sequences advanced together, per engine step.", labels=["model"]
    )
    histogram.add_metric([model], buckets, sum_value=sum(s * c for s, c in sizes.items()))
    return histogram


def start_metrics_server(host: EngineHost) -> str | None:
    """Serve this worker's metrics; its address as Prometheus reaches it, or None (turned
    off, or the port is taken: the worker serves on without metrics, and says so)."""
    setting = settings.LLM_WORKER_METRICS_PORT.strip().lower()
    if setting in _OFF:
        return None
    metrics.model_served(host.spec.name)
    addr = settings.LLM_WORKER_METRICS_ADDR
    try:
        port = serve_worker_metrics(addr=addr, port=int(setting), collectors=(EngineCollector(host),))
    except OSError as exc:
        logger.error("worker metrics: cannot listen on %s:%s (%s); serving without", addr, setting, exc)
        return None
    advertised = settings.LLM_WORKER_METRICS_HOST or (
        socket.gethostname() if addr in ("", "0.0.0.0") else addr
    )
    logger.info("worker metrics on http://%s:%s/metrics", advertised, port)
    return f"{advertised}:{port}"
