"""Migrations that move data: the rows written before them mean the same after."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_PARENTS = [("conversations", "0004_apikey_default_priority")]
PARENTS = [("conversations", "0005_message_parent")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_messages_written_before_parents_existed_follow_the_one_before_them():
    old = _migrate(BEFORE_PARENTS)
    try:
        user = old.get_model("auth", "User").objects.create(username="old-timer")
        Conversation = old.get_model("conversations", "Conversation")
        Message = old.get_model("conversations", "Message")
        a, b = (Conversation.objects.create(owner=user, model="echo") for _ in range(2))
        # Interleaved, as two conversations going on at once write them.
        made = [
            Message.objects.create(conversation=conversation, role=role, content=f"{conversation.pk}-{i}")
            for i, (conversation, role) in enumerate(
                [(a, "user"), (b, "user"), (a, "assistant"), (b, "assistant"), (a, "user")]
            )
        ]
    finally:
        new = _migrate(PARENTS)

    Message = new.get_model("conversations", "Message")
    parents = dict(Message.objects.filter(pk__in=[m.pk for m in made]).values_list("pk", "parent_id"))
    a1, b1, a2, b2, a3 = (m.pk for m in made)
    assert parents == {a1: None, b1: None, a2: a1, b2: b1, a3: a2}
