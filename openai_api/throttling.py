"""Per-client rate limits for the OpenAI API: the seam for DRF-style throttles.

``OPENAI_API_THROTTLE_CLASSES`` names DRF throttle classes (for example
``rest_framework.throttling.UserRateThrottle``, whose rate comes from
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["user"]``); each is asked
``allow_request(request, view)`` in turn, as DRF views do, and the first
refusal is a 429 with its ``wait()`` as ``Retry-After``. None by default.
"""

from __future__ import annotations

import math

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from django.utils.module_loading import import_string

from llmproject.exceptions import TooManyRequests
from llmproject.throttling import tokens_charge


def throttle_check(*, request: HttpRequest, user: AbstractBaseUser) -> None:
    """Raise ``TooManyRequests`` if a configured throttle refuses ``user``'s request.

    Synchronous (DRF throttles use Django's cache); call it through ``sync_to_async``.
    """
    if not settings.OPENAI_API_THROTTLE_CLASSES:
        return
    request.user = user
    for path in settings.OPENAI_API_THROTTLE_CLASSES:
        throttle = import_string(path)()
        if not throttle.allow_request(request, None):
            wait = throttle.wait()
            raise TooManyRequests(
                getattr(throttle, "refusal", "rate limit reached for your API key; try again later"),
                code="rate_limit_exceeded",
                retry_after=max(1, math.ceil(wait)) if wait is not None else None,
            )


def tokens_charge_openai(*, user: AbstractBaseUser, tokens: int) -> None:
    """Charge an admitted request's tokens to ``user``'s budget, if a ``TokenRateThrottle``
    is among ``OPENAI_API_THROTTLE_CLASSES``. Synchronous (the cache)."""
    tokens_charge(
        user=user, tokens=tokens, throttles=[import_string(p) for p in settings.OPENAI_API_THROTTLE_CLASSES]
    )
