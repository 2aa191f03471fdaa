"""kombu's Redis transport, as a model worker needs it to survive a Redis restart.

When the broker connection drops, Celery (5.7, kombu 5.7) first ``collect()``s
the connection, which detaches its transport, then ``close()``s it; closing
the channel restores the messages of the tasks still running to their queue,
through the detached transport: ``AttributeError: 'NoneType' object has no
attribute 'hostname'``, which Celery takes for an unrecoverable error. Every
worker with answers in flight exited on a Redis restart (seen in
tests/faults/test_redis_restart.py); its answers were lost with it. (The
same detached transport fails this way in other paths too:
https://github.com/celery/kombu/issues/582.)

Those messages need no restoring there: their tasks run on, and store their
answers; the messages stay in Redis's ``unacked`` hash, come back after the
visibility timeout and are dropped by the claim (the job is final by then), and
a job nobody finishes is the reconciler's. So a channel whose transport is gone
skips the restore, and an ack through it leaves the message where it is.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

logger = logging.getLogger(__name__)


def _detached(qos: Any) -> bool:
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def redis_transport_survive_reconnects() -> None:
    """Patch kombu's Redis QoS (once per process) as the module docstring says."""
    qos = kombu_redis.QoS
    if getattr(qos, "_survives_reconnects", False):
        return
    restore_unacked, ack = qos.restore_unacked, qos.ack

    def restore_unacked_if_attached(self: Any, client: Any = None) -> Any:
        if client is None and _detached(self):
            logger.warning(
                "broker connection lost: %d message(s) of running tasks stay unacked in Redis",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return restore_unacked(self, client)

    def ack_if_attached(self: Any, delivery_tag: Any) -> None:
        if _detached(self):
            # Bookkeeping only: the message comes back after the visibility timeout,
            # to a claim that drops it.
            super(qos, self).ack(delivery_tag)
            return
        ack(self, delivery_tag)

    qos.restore_unacked = restore_unacked_if_attached
    qos.ack = ack_if_attached
    qos._survives_reconnects = True
