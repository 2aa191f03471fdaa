"""What the reconciler did: counted per action and model (Prometheus, and the log)."""

from __future__ import annotations

from collections import Counter

from llmproject import metrics

# Actions: "requeued" (a running job taken back for a new attempt), "republished"
# (a queued job's lost message sent again), "stored" (a stashed answer stored),
# "cancelled" (the cancel of a job nobody runs finished), "cancel_resent" (the
# cancel of a job its live worker missed, sent again), "failed" (a job at its
# attempt cap), "final_sent" (a final event Redis had not taken), "queue_declared".
totals: Counter[tuple[str, str]] = Counter()


def action_recorded(*, action: str, model: str, count: int = 1) -> None:
    """Count ``count`` reconciler actions of one kind on ``model``'s jobs."""
    totals[(action, model)] += count
    metrics.reconciler_action(action, model=model, count=count)
