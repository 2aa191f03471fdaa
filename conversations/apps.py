from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


def _sqlite_wal(using: str = "default", **kwargs: Any) -> None:
    """Put an SQLite database in WAL mode (persistent in the file): readers do not
    block the writer, so the web process and the workers can share it."""
    connection = connections[using]
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")


class ConversationsConfig(AppConfig):
    name = "conversations"

    def ready(self) -> None:
        post_migrate.connect(_sqlite_wal, sender=self, dispatch_uid="conversations.sqlite_wal")
