"""What the reconciler did: counted per action and model, logged."""

from __future__ import annotations

import logging
from collections import Counter

logger = logging.getLogger("conversations.reconciler")

# Actions: "requeued" (a running job taken back for a new attempt), "republished"
# (a queued job's lost message sent again), "stored" (a stashed answer stored),
# "cancelled" (the cancel of a job nobody runs finished), "failed" (a job at its
# attempt cap), "final_sent" (a final event Redis had not taken), "queue_declared".
totals: Counter[tuple[str, str]] = Counter()


def action_recorded(*, action: str, model: str, count: int = 1) -> None:
    """Count ``count`` reconciler actions of one kind on ``model``'s jobs.

    Metrics: the Prometheus counter of the reconciler's actions (labels ``action``,
    ``model``) is incremented here once the metrics module lands.
    """
    totals[(action, model)] += count
