"""API keys: ``Authorization: Bearer <key>`` for REST, WebSocket and OpenAI clients."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from conversations.models import ApiKey

KEY_PREFIX = "llm-"
_PREFIX_CHARS = 12
# Writing last_used_at on every request would make every read a write.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_create(*, user: AbstractBaseUser, name: str = "") -> tuple[ApiKey, str]:
    """Create a key; returns it with the secret, which is shown once and never stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user, name=name, prefix=raw[len(KEY_PREFIX) :][:_PREFIX_CHARS], key_hash=_hash(raw)
    )
    return key, raw


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a valid key grants: its user, and the priority of the user's jobs when a
    request names none (``ApiKey.default_priority``)."""

    user: AbstractBaseUser
    priority: int


class _KeyCache:
    """Valid keys seen lately (by hash), each for ``API_KEY_CACHE_SECONDS``: most requests
    then need no database round trip to authenticate. Unknown keys are never kept."""

    def __init__(self, size: int = 4096) -> None:
        self._entries: OrderedDict[str, tuple[float, KeyGrant]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, digest: str) -> KeyGrant | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._entries[digest]
                return None
            return entry[1]

    def put(self, digest: str, grant: KeyGrant) -> None:
        ttl = settings.API_KEY_CACHE_SECONDS
        if ttl <= 0:
            return
        with self._lock:
            self._entries[digest] = (time.monotonic() + ttl, grant)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_key_cache = _KeyCache()


def api_key_grant_cached(*, raw: str) -> KeyGrant | None:
    """What ``raw`` grants, if this process validated it in the last
    ``API_KEY_CACHE_SECONDS``; None means "ask ``api_key_grant``". No database
    access: safe on an event loop."""
    if settings.API_KEY_CACHE_SECONDS <= 0 or not raw.startswith(KEY_PREFIX):
        return None
    return _key_cache.get(_hash(raw))


def api_key_grant(*, raw: str) -> KeyGrant | None:
    """What ``raw`` grants, or None for an unknown, revoked or inactive key.

    A key found valid is remembered for ``API_KEY_CACHE_SECONDS`` (see
    ``api_key_grant_cached``), so revoking it takes effect within that time.
    """
    if not raw.startswith(KEY_PREFIX):
        return None
    digest = _hash(raw)
    cached = api_key_grant_cached(raw=raw)
    if cached is not None:
        return cached
    prefix = raw[len(KEY_PREFIX) :][:_PREFIX_CHARS]
    key = ApiKey.objects.select_related("user").filter(prefix=prefix, revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, digest) or not key.user.is_active:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    grant = KeyGrant(user=key.user, priority=key.default_priority)
    _key_cache.put(digest, grant)
    return grant


def api_key_user_cached(*, raw: str) -> AbstractBaseUser | None:
    """``api_key_grant_cached``'s user."""
    grant = api_key_grant_cached(raw=raw)
    return grant.user if grant is not None else None


def api_key_user(*, raw: str) -> AbstractBaseUser | None:
    """``api_key_grant``'s user: the active user owning ``raw``, or None."""
    grant = api_key_grant(raw=raw)
    return grant.user if grant is not None else None


def bearer_token(authorization: str) -> str | None:
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, KeyGrant] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        token = bearer_token(header)
        if token is None:
            raise exceptions.AuthenticationFailed("use 'Authorization: Bearer <api key>'")
        grant = api_key_grant(raw=token)
        if grant is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        return grant.user, grant  # request.auth: the key's grant (its default priority)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def api_key_revoke(*, key: ApiKey) -> bool:
    """Revoke a key (every process refuses it within ``API_KEY_CACHE_SECONDS``). False if it
    already was."""
    return bool(ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()))
