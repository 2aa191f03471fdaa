"""A budget of tokens per user and period, as a DRF throttle on the shared cache.

``API_THROTTLE_RATES=tokens=100000/hour`` lets each user's requests reserve
100,000 tokens an hour (fixed windows: the budget refills at the start of each
period, counted in Django's cache, Redis, so across every web process). A
request is charged once admitted, as OpenAI's rate limiter counts one: its
``max_tokens`` (the most it may generate) plus about a token per four
characters of the text it sends. The throttle refuses the user's requests (429,
``Retry-After`` until the window ends) once the budget is spent; the request
that crosses the line is let through, as it was admitted before. Used by the
REST API (``API_THROTTLE_CLASSES``) and the OpenAI API
(``OPENAI_API_THROTTLE_CLASSES``); add DRF's ``UserRateThrottle`` beside it for
a budget of requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.throttling import SimpleRateThrottle


def token_cost(*, max_tokens: int, text_chars: int) -> int:
    """What a request reserves of its user's budget."""
    return max_tokens + math.ceil(text_chars / 4)


class TokenRateThrottle(SimpleRateThrottle):
    scope = "tokens"
    refusal = "token budget spent for your API key in this period; try again later"

    def _key(self, user: Any) -> str | None:
        if user is None or not user.is_authenticated:
            return None
        window = int(self.timer() // self.duration)
        return f"{self.cache_format % {'scope': self.scope, 'ident': user.pk}}_{window}"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        return self._key(getattr(request, "user", None))

    def allow_request(self, request: Any, view: Any) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        self.now = self.timer()
        return int(self.cache.get(key, 0)) < self.num_requests  # type: ignore[operator]

    def wait(self) -> float:
        return self.duration - self.now % self.duration  # type: ignore[operator]

    def charge(self, *, user: AbstractBaseUser, tokens: int) -> None:
        key = self._key(user)
        if self.rate is None or key is None or tokens <= 0:
            return
        try:
            self.cache.incr(key, tokens)
        except ValueError:  # the window's first charge
            if not self.cache.add(key, tokens, self.duration):
                self.cache.incr(key, tokens)


def tokens_charge(*, user: AbstractBaseUser, tokens: int, throttles: Iterable[type]) -> None:
    """Charge ``tokens`` to ``user``'s budget in each ``TokenRateThrottle`` of ``throttles``."""
    for throttle in throttles:
        if issubclass(throttle, TokenRateThrottle):
            throttle().charge(user=user, tokens=tokens)
