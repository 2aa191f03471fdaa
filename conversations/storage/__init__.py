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

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Model, Q
from django.db.models.sql.query import Query


def on_postgresql() -> bool:
    """Whether the one-statement paths apply (the database in use is PostgreSQL)."""
    return connection.vendor == "postgresql"


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def where(model: type[Model], rule: Callable[..., Q], **values: Any) -> tuple[str, list[Any]]:
    """``rule(**values)`` (a model's own condition) as SQL over ``model``'s unqualified
    columns, with its ``%s`` parameters: what the ORM path filters on, for the SQL path.

    Compiling a condition costs 0.15 to 0.4 ms of CPU (measured: as much as the
    rest of a claim's Python), so each rule is compiled once per process, with
    stand-ins for its ``values`` (datetimes and integers), whose places among
    the parameters then take the real values.
    """
    key = (model, rule.__qualname__, tuple(sorted(values)), connection.vendor)
    compiled = _compiled.get(key)
    if compiled is None:
        stand_ins = {name: _stand_in(value, i) for i, (name, value) in enumerate(values.items())}
        sql, params = _compile(model, rule(**stand_ins))
        slots = [next((name for name, s in stand_ins.items() if _same(p, s)), None) for p in params]
        if sorted(filter(None, slots)) != sorted(values):
            # A value was adapted beyond recognition: compile this rule at every use.
            return _compile(model, rule(**values))
        compiled = _compiled[key] = (sql, params, slots)
    sql, params, slots = compiled
    return sql, [p if slot is None else _like(p, values[slot]) for p, slot in zip(params, slots, strict=True)]


_compiled: dict[tuple[Any, ...], tuple[str, list[Any], list[str | None]]] = {}
_STAND_IN_TIME = datetime(1901, 2, 3, 4, 5, 6, tzinfo=UTC)


def _stand_in(value: Any, index: int) -> Any:
    if isinstance(value, datetime):
        return _STAND_IN_TIME + timedelta(microseconds=index)
    if isinstance(value, int) and not isinstance(value, bool):
        return 2_087_654_321 + index  # within every integer column's range (Django checks it)
    raise TypeError(f"no stand-in for a rule's value of type {type(value).__name__}")


def _same(param: Any, stand_in: Any) -> bool:
    # Django hands integers over in psycopg's own types (Int4...) on PostgreSQL.
    return isinstance(param, type(stand_in)) and param == stand_in


def _like(param: Any, value: Any) -> Any:
    """``value`` in the type the compiled ``param`` it replaces has."""
    return value if type(param) is type(value) else type(param)(value)


def _compile(model: type[Model], condition: Q) -> tuple[str, list[Any]]:
    query = Query(model=model, alias_cols=False)
    compiler = query.get_compiler(connection=connection)
    sql, params = query.build_where(condition).as_sql(compiler, connection)
    return sql, list(params)
