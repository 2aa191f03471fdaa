"""While the database is down, both APIs answer 503 in their own shape with Retry-After,
at once; when it is back, they serve again within seconds.

A real outage for a live server (uvicorn, its connection pool, as in
production): on PostgreSQL the server reaches the database through a TCP
proxy the test cuts (open connections reset, new ones refused); on SQLite
the server's database file is swapped for a directory, which no connection
can open.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests.conftest import _database_url, wait_for
from tests.openai_api.conftest import ServerProcess, start_server
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Far below the 10 s a request waited for the pool before (DB_POOL_TIMEOUT), and
# above anything a loaded 2-core machine adds to a request that does nothing.
QUICKLY = 1.5


@dataclass
class Outage:
    server: ServerProcess
    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture
def outage(django_db_blocker, tmp_path: Path, echo_worker, api_user) -> Iterator[Outage]:
    if connection.vendor == "postgresql":
        db = connection.settings_dict
        proxy = TcpProxy(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
        url = _database_url().replace(
            f"@{db.get('HOST') or 'localhost'}{':' + str(db['PORT']) if db.get('PORT') else ''}/",
            f"@127.0.0.1:{proxy.port}/",
        )
        assert str(proxy.port) in url
        down, up, cleanup = proxy.cut, proxy.restore, proxy.close
    else:
        # The server gets a copy of the test database (the user and key included).
        path = tmp_path / "db.sqlite3"
        source = sqlite3.connect(connection.settings_dict["NAME"])
        with sqlite3.connect(path) as copy:
            source.backup(copy)
        source.close()
        url = f"sqlite:///{path}"
        away = tmp_path / "db.sqlite3.away"

        def down() -> None:
            os.rename(path, away)
            path.mkdir()

        def up() -> None:
            path.rmdir()
            os.rename(away, path)

        def cleanup() -> None:
            pass

    server = start_server(django_db_blocker, tmp_path / "uvicorn.log", DATABASE_URL=url)
    try:
        yield Outage(server, down, up)
    finally:
        server.stop()
        cleanup()


def test_while_the_database_is_down_both_apis_answer_503_in_their_shape_at_once(outage, api_user):
    root = outage.server.base_url.removesuffix("/v1")
    http = httpx.Client(base_url=root, headers={"Authorization": f"Bearer {api_user.key}"}, timeout=30)
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    # (On SQLite the server's database is a copy the echo worker does not see: no answer.)
    answered = connection.vendor == "postgresql"
    assert http.post("/api/conversations/", json={"title": "before"}).status_code == 201
    if answered:
        assert http.post("/v1/chat/completions", json=chat).status_code == 200

    outage.down()
    timings = []
    # More requests than the pool keeps idle connections: past them, a request used
    # to wait DB_POOL_TIMEOUT (10 s) for one, then fail with an HTML 500.
    for _ in range(4):
        for method, path, body in (
            ("GET", "/api/conversations/", None),
            ("POST", "/api/conversations/", {"title": "during"}),
            ("POST", "/v1/chat/completions", chat),
        ):
            started = time.monotonic()
            response = http.request(method, path, json=body)
            timings.append(time.monotonic() - started)
            assert response.status_code == 503, (path, response.text[:300])
            assert int(response.headers["retry-after"]) > 0
            if path.startswith("/v1/"):
                error = response.json()["error"]
                assert (error["type"], error["code"]) == ("server_error", "database_unavailable")
            else:
                assert response.json()["code"] == "database_unavailable"
    assert max(timings) < QUICKLY, timings

    outage.up()
    back = time.monotonic()
    wait_for(lambda: http.get("/api/conversations/").status_code == 200, timeout=10, interval=0.2)
    assert time.monotonic() - back < 5
    if answered:
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
    titles = [c["title"] for c in http.get("/api/conversations/").json()["results"]]
    assert "during" not in titles and "before" in titles
