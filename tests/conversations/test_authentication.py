"""API keys: a valid key is remembered a short while, a revoked one refused after it."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from conversations.authentication import api_key_create, api_key_user, api_key_user_cached
from conversations.models import ApiKey
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_a_revoked_key_is_refused_once_the_cache_time_has_passed(settings):
    settings.API_KEY_CACHE_SECONDS = 0.3
    user = UserFactory()
    key, raw = api_key_create(user=user)
    assert api_key_user_cached(raw=raw) is None  # not seen yet
    assert api_key_user(raw=raw) == user
    assert api_key_user_cached(raw=raw) == user
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert api_key_user(raw=raw) == user  # still remembered by this process
    time.sleep(0.35)
    assert api_key_user_cached(raw=raw) is None
    assert api_key_user(raw=raw) is None


def test_without_the_cache_revocation_is_immediate(settings):
    settings.API_KEY_CACHE_SECONDS = 0
    key, raw = api_key_create(user=UserFactory())
    assert api_key_user(raw=raw) is not None
    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    assert api_key_user(raw=raw) is None


def test_unknown_keys_are_never_remembered(settings):
    settings.API_KEY_CACHE_SECONDS = 60
    _, raw = api_key_create(user=UserFactory())
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    assert api_key_user(raw=forged) is None
    assert api_key_user_cached(raw=forged) is None
