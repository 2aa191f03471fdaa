"""What the broker (Redis, kombu's layout) holds of the jobs' messages, read in one snapshot.

kombu keeps a queue as one Redis list per priority step (``<queue>``,
``<queue><sep><step>``); a message a worker has taken but not acknowledged
sits in the ``unacked`` hash (delivery tag -> message) with the time it was
taken in ``unacked_index``, until the worker acks it, or until the visibility
timeout brings it back (which is how a dead worker's messages return, 15
minutes later with the defaults). A message can also be in neither: Redis
restarted without persistence, or a worker died between popping it and
recording it as unacked (two separate commands in kombu). Celery's task id
is the job's ``celery_task_id``, and every delivery of a job (retries and
re-publishes) carries it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings

from llmproject.celery import app

_DEFAULT_SEP = "\x06\x16"  # kombu's, when the transport options do not set one


@dataclass(frozen=True, slots=True)
class Held:
    """A message a worker has taken and not acknowledged."""

    taken_at: float  # unix time
    eta: float | None  # a retry's "not before" (unix time), which the worker waits for


@dataclass(slots=True)
class BrokerView:
    waiting: set[str] = field(default_factory=set)  # task ids in the queues' lists
    held: dict[str, list[Held]] = field(default_factory=dict)  # task id -> unacked copies
    unbound: set[str] = field(default_factory=set)  # queues whose exchange binding is gone

    def has(self, task_id: str, *, now: float, grace: float) -> bool:
        """Whether a message of ``task_id`` will be delivered without help: waiting in its
        queue, taken by a worker within ``grace``, or held for a retry not yet due (or due
        within ``grace``). A copy held longer than that by a worker that never claimed the
        job belongs to a worker that died (a live one claims what it takes at once)."""
        if task_id in self.waiting:
            return True
        for copy in self.held.get(task_id, ()):
            if copy.taken_at > now - grace or (copy.eta is not None and copy.eta > now - grace):
                return True
        return False


def _options() -> dict[str, Any]:
    return dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps ``queue`` in, one per priority step."""
    options = _options()
    sep = options.get("sep", _DEFAULT_SEP)
    steps = sorted({int(s) for s in options.get("priority_steps", [0, 3, 6, 9])})
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in steps]


def binding_key(queue: str) -> str:
    """kombu's routing table of the exchange Celery publishes ``queue``'s messages to (an
    exchange named as the queue). Without it a publish is dropped."""
    return f"_kombu.binding.{queue}"


def _task_id(raw: str) -> str | None:
    try:
        return str(json.loads(raw)["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return None


def _eta(message: dict[str, Any]) -> float | None:
    eta = (message.get("headers") or {}).get("eta")
    if not eta:
        return None
    try:
        return datetime.fromisoformat(eta).timestamp()
    except (TypeError, ValueError):
        return None


def broker_view(client: Any, queues: Iterable[str]) -> BrokerView:
    """One atomic read (MULTI) of ``queues``' lists and bindings and of the unacked
    messages, with a blocking client of the broker's Redis."""
    queues = sorted(set(queues))
    options = _options()
    unacked = options.get("unacked_key", "unacked")
    unacked_index = options.get("unacked_index_key", "unacked_index")
    lists = [(queue, key) for queue in queues for key in queue_lists(queue)]
    with client.pipeline(transaction=True) as pipe:
        for _, key in lists:
            pipe.lrange(key, 0, -1)
        for queue in queues:
            pipe.exists(binding_key(queue))
        pipe.hgetall(unacked)
        pipe.zrange(unacked_index, 0, -1, withscores=True)
        replies = pipe.execute()
    view = BrokerView()
    for raws in replies[: len(lists)]:
        view.waiting.update(filter(None, map(_task_id, raws)))
    bound = replies[len(lists) : len(lists) + len(queues)]
    view.unbound = {queue for queue, exists in zip(queues, bound, strict=True) if not exists}
    held_raw, index = replies[-2], dict(replies[-1])
    for tag, raw in held_raw.items():
        try:
            message = json.loads(raw)[0]
            task_id = str(message["headers"]["id"])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        view.held.setdefault(task_id, []).append(Held(taken_at=float(index.get(tag, 0)), eta=_eta(message)))
    return view


def queue_declare(queue: str) -> None:
    """Declare ``queue`` and its binding again (Redis lost them; a worker re-declares its
    queues only when it reconnects, and until then every publish to it is dropped)."""
    with app.connection_for_write() as connection:
        app.amqp.queues[queue].bind(connection.default_channel).declare()
