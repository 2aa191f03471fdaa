"""The Celery app. Configuration lives in Django settings under the CELERY_ namespace."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproject.settings")

app = Celery("llmproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _django_logging(**kwargs: Any) -> None:
    """Workers log as the web process does (``settings.LOGGING``: ``LOG_FORMAT``, the
    request's correlation id on each line), not in Celery's own format; ``LOG_LEVEL``
    sets the level. Connected, this receiver replaces Celery's logging setup."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
