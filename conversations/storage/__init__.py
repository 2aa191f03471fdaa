"""The storage seams: each state change of the hot path, written once per database path.

Three state changes run for every request: storing a chat completion's rows
(``chat``), a worker's claim of a job (``claim``) and the storage of its
answer (``finish``). Through the ORM each is a transaction of several
statements; on a busy server building and running those cost more CPU than
anything else of the platform per request (docs/benchmarks.md). On
PostgreSQL each is one statement of data-modifying CTEs instead. Both paths of
a change sit side by side in its module, their conditions are the models'
own (``InferenceJob.claimable``, ``InferenceJob.held``, ``Message.in_history``,
compiled to SQL by Django here), and tests/conversations/test_storage_parity.py
runs each change through both paths and compares the rows they leave.
"""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Model, Q
from django.db.models.sql.query import Query


def on_postgresql() -> bool:
    """Whether the one-statement paths apply (the database in use is PostgreSQL)."""
    return connection.vendor == "postgresql"


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def where(model: type[Model], condition: Q) -> tuple[str, list[Any]]:
    """``condition`` (a model's own rule) as SQL over ``model``'s unqualified columns, with
    its ``%s`` parameters: what the ORM path filters on, for the SQL path."""
    query = Query(model=model, alias_cols=False)
    compiler = query.get_compiler(connection=connection)
    sql, params = query.build_where(condition).as_sql(compiler, connection)
    return sql, list(params)
