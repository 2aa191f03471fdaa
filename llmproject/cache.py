"""Django's Redis cache, counted with django-prometheus's cache families.

django-prometheus's own Redis backends need django-redis (its ``RedisCache``)
or subclass Django's with the same few lines (``NativeRedisCache``, in a
module that imports django-redis first); this is that subclass, without the
extra package. Gets are counted: hits, misses, failures (``backend="redis"``).
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)

_get_total = django_cache_get_total.labels(backend="redis")
_hits = django_cache_hits_total.labels(backend="redis")
_misses = django_cache_misses_total.labels(backend="redis")
_fails = django_cache_get_fail_total.labels(backend="redis")
_MISSING = object()


class RedisCache(DjangoRedisCache):
    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        _get_total.inc()
        try:
            value = super().get(key, _MISSING, version=version)
        except Exception:
            _fails.inc()
            raise
        if value is _MISSING:
            _misses.inc()
            return default
        _hits.inc()
        return value
