"""Django's PostgreSQL backend (as django-prometheus wraps it, for its database
metrics), with a connection pool that fails fast while the server is unreachable.

psycopg_pool's ``getconn`` waits up to the pool's timeout (``DB_POOL_TIMEOUT``,
10 s) for a connection. While the server is down none ever comes: every
request waited 10 s, then failed with a 500. Here:

- every attempt to connect (the pool's own, in its background threads, and
  the probes below) records whether the server answered;
- while the last attempt failed and the pool holds no idle connection, a
  request does not queue: once a second per process one request tries to
  connect itself (a probe, with a short ``connect_timeout``), and the others
  fail at once with ``OperationalError`` (a 503 with ``Retry-After`` to the
  client, ``llmproject.exception_handler``);
- when a probe gets through, the process's pool is replaced by a fresh one.
  The old pool retries with a backoff that doubles (1, 2, 4... s, up to its
  ``reconnect_timeout``, 5 min), so after a 30 s outage it could stay empty
  for about 30 s more; the new one connects at once. Connections taken from
  the old pool are closed when given back.

With no pool (``DB_POOL=false``) Django connects per request, and a refused
connection fails at once anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from django_prometheus.db.backends.postgresql import base

logger = logging.getLogger(__name__)

# At most one probe per this many seconds per process while the server is unreachable.
PROBE_INTERVAL = 1.0
# libpq's smallest connect timeout (1 is read as 2).
PROBE_CONNECT_TIMEOUT = 2


class _Reachability:
    """Whether the last attempt of this process to connect to one database failed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down_since: float | None = None
        self.last_probe = 0.0

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning("the database stopped answering; requests fail fast until it is back")

    def answered(self) -> None:
        if self.down_since is not None:
            logger.warning("the database answers again after %.1f s", time.monotonic() - self.down_since)
            self.down_since = None


_reachability: dict[str, _Reachability] = {}


def _connection_class(reachability: _Reachability) -> type[psycopg.Connection[Any]]:
    class Connection(psycopg.Connection[Any]):
        """psycopg's connection, recording whether connecting worked (the pool connects
        through this class)."""

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError:
                reachability.failed()
                raise
            reachability.answered()
            return conn

    return Connection


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, settings_dict: dict[str, Any], alias: str = "default") -> None:
        super().__init__(settings_dict, alias)
        self._reachability = _reachability.setdefault(alias, _Reachability())
        pool = settings_dict["OPTIONS"].get("pool")
        if pool and "connection_class" not in (pool if isinstance(pool, dict) else {}):
            settings_dict["OPTIONS"]["pool"] = {
                **(pool if isinstance(pool, dict) else {}),
                "connection_class": _connection_class(self._reachability),
            }

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        reachability = self._reachability
        if reachability.down_since is not None and self.pool is not None:
            if not self.pool.get_stats().get("pool_available"):
                self._probe(conn_params)
        return super().get_new_connection(conn_params)

    def _probe(self, conn_params: dict[str, Any]) -> None:
        """Connect once to see whether the server is back (at most once per
        ``PROBE_INTERVAL`` in this process); raise ``OperationalError`` if it is not."""
        reachability = self._reachability
        with reachability.lock:
            if reachability.down_since is None:
                return  # another request's probe got through
            now = time.monotonic()
            if now - reachability.last_probe < PROBE_INTERVAL:
                raise psycopg.OperationalError(
                    f"the database is unreachable (for {now - reachability.down_since:.1f} s)"
                )
            reachability.last_probe = now
        probe = _connection_class(reachability).connect(
            **{**conn_params, "connect_timeout": PROBE_CONNECT_TIMEOUT}
        )
        probe.close()
        # Back: a fresh pool, which connects at once (the old one may be backing off).
        old = self._connection_pools.pop(self.alias, None)
        if old is not None:
            threading.Thread(target=old.close, name="close-stale-pool", daemon=True).start()
