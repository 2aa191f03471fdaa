"""Per-model gauges read from Redis when Prometheus scrapes ``/metrics``: the queue's
depth (jobs no worker has taken yet, as admission counts them) and the live workers.

Read, not counted: the broker is the truth about its queue, whichever process
published or took a job. One pipeline per scrape (two when the broker is
another Redis), a few LLENs and a ZCOUNT per model.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.conf import settings
from prometheus_client.core import GaugeMetricFamily

from conversations.admission import queue_keys
from inference import liveness, registry
from llmproject.redis_client import sync_redis_client


class QueueCollector:
    """A ``prometheus_client`` collector (named in ``METRICS_COLLECTORS``)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        specs = sorted(registry.models().values(), key=lambda s: s.name)
        broker = sync_redis_client(settings.CELERY_BROKER_URL)
        with broker.pipeline(transaction=False) as pipe:
            for spec in specs:
                for key in queue_keys(spec):
                    pipe.llen(key)
            lengths = pipe.execute()
        with sync_redis_client().pipeline(transaction=False) as pipe:
            for spec in specs:
                liveness.queue_workers_alive(pipe, model=spec.name)
            alive = pipe.execute()
        depth = GaugeMetricFamily("llm_queue_depth", "Jobs waiting in the model's queue.", labels=["model"])
        workers = GaugeMetricFamily(
            "llm_workers_alive", "Workers of the model with a recent heartbeat.", labels=["model"]
        )
        per_model = len(lengths) // len(specs) if specs else 0
        for i, spec in enumerate(specs):
            depth.add_metric([spec.name], sum(int(n) for n in lengths[i * per_model : (i + 1) * per_model]))
            workers.add_metric([spec.name], int(alive[i]))
        yield depth
        yield workers
