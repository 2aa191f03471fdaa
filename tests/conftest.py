"""Shared fixtures: users with API keys, and a real model worker process.

Integration tests run against real services: the Redis of the settings
(database 15), the test database, and a Celery worker started the way
production starts it (``manage.py run_workers``), serving the simulated
engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from conversations.authentication import api_key_create
from llmproject.celery import app as celery_app
from tests.factories import UserFactory
from tests.openapi import OpenApiDocument

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ApiUser:
    user: Any
    key: str

    @property
    def auth_header(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.key}"}

    def client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.key}")
        return client


@pytest.fixture
def make_api_user(db: None) -> Callable[..., ApiUser]:
    def make(**kwargs: Any) -> ApiUser:
        user = UserFactory(**kwargs)
        _, raw = api_key_create(user=user)
        return ApiUser(user=user, key=raw)

    return make


@pytest.fixture
def api_user(make_api_user: Callable[..., ApiUser]) -> ApiUser:
    return make_api_user()


@pytest.fixture(scope="session")
def openapi() -> OpenApiDocument:
    """The OpenAPI schema as ``/api/schema/`` serves it, to check responses against."""
    return OpenApiDocument.served()


@pytest.fixture(autouse=True)
def _clean_stream_keys() -> Iterator[None]:
    """Conversation ids can repeat across tests (SQLite reuses them): drop their streams.

    Only the platform's stream keys go; Celery's queue bindings in the same
    database must stay or the running worker stops receiving.
    """
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter("llm:{conv:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    yield


@pytest.fixture(autouse=True)
async def _disconnect_websockets(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Disconnect every test WebSocket when its test ends, refused ones included.

    A consumer reads from the channel layer until its client disconnects.
    Left running, that read is cancelled when the test's event loop closes,
    and channels-redis can wait forever in the cancellation: one refused,
    never-disconnected socket once hung a whole CI run.
    """
    opened: list[WebsocketCommunicator] = []
    init = WebsocketCommunicator.__init__

    def tracking_init(self: WebsocketCommunicator, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(WebsocketCommunicator, "__init__", tracking_init)
    yield
    for communicator in opened:
        with contextlib.suppress(Exception):
            await communicator.disconnect(timeout=5)
    # Each test has its own event loop: give the next one a fresh channel layer
    # rather than one whose locks and receive state belong to this loop.
    channel_layers.backends.clear()


def _database_url() -> str:
    """A URL for the test database, for processes started by the tests."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{db.get('HOST') or 'localhost'}{port}/{db['NAME']}"


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        TEST_REDIS_URL=settings.REDIS_URL,
        DB_POOL="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class WorkerProcess:
    """``manage.py run_workers <model> [--group N]`` in a subprocess, with its log in a file."""

    def __init__(self, model: str, log_path: Path, *, group: int | None = None, **env: str) -> None:
        self.model = model
        self.log_path = log_path
        self.log = log_path.open("wb")
        command = [sys.executable, str(ROOT / "manage.py"), "run_workers", model, "--loglevel=info"]
        if group is not None:
            command.append(f"--group={group}")
        self.proc = subprocess.Popen(
            command, env=worker_env(**env), stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        self.name = f"{model}-{group or 0}@{os.uname().nodename}"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            if celery_app.control.ping(destination=[self.name], timeout=0.5):
                return
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def engine_stats(self, *, reset: bool = False) -> dict[str, Any]:
        replies = celery_app.control.broadcast(
            "engine_stats", arguments={"reset": reset}, destination=[self.name], reply=True, timeout=5
        )
        assert replies, "worker did not answer engine_stats"
        return replies[0][self.name]

    def active_tasks(self) -> list[dict[str, Any]]:
        """The tasks the worker is running now (Celery's ``inspect active``)."""
        replies = celery_app.control.inspect(destination=[self.name], timeout=5).active()
        assert replies, "worker did not answer inspect active"
        return list(replies[self.name])

    def pause(self) -> None:
        """Stop taking jobs from the model's queue (they wait there), like an operator would."""
        replies = celery_app.control.cancel_consumer(
            f"llm.{self.model}", destination=[self.name], reply=True, timeout=5
        )
        assert replies, "worker did not answer cancel_consumer"

    def resume(self) -> None:
        replies = celery_app.control.add_consumer(
            f"llm.{self.model}", destination=[self.name], reply=True, timeout=5
        )
        assert replies, "worker did not answer add_consumer"

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@contextlib.contextmanager
def worker_running(
    django_db_blocker: Any,
    model: str,
    log_path: Path,
    *,
    timeout: float = 60,
    stop_timeout: float = 30,
    **kwargs: Any,
) -> Iterator[WorkerProcess]:
    """A ``WorkerProcess`` (``kwargs``: its group and environment) that answers pings, stopped on leaving."""
    with django_db_blocker.unblock():
        worker = WorkerProcess(model, log_path, **kwargs)
    try:
        worker.wait_ready(timeout)
        yield worker
    finally:
        worker.stop(stop_timeout)


def registry_with(model: str, **options: Any) -> str:
    """The tests' registry as ``LLM_MODELS`` JSON, ``model``'s engine options updated with ``options``."""
    models = json.loads(json.dumps(settings.LLM_MODELS))
    models[model]["options"].update(options)
    return json.dumps(models)


@pytest.fixture(scope="session", autouse=True)
def _fresh_test_redis() -> None:
    """Start from an empty test Redis database: a run that was killed can leave
    queued or unacknowledged jobs whose ids the new test database reuses."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    client.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_stray_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Before the test database is dropped, end sessions other threads left open.

    Consumers run their queries in asgiref's executor threads, whose
    connections pytest-django does not close; PostgreSQL refuses to drop a
    database with open sessions.
    """
    yield
    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def echo_worker(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The session's worker for model ``echo`` (simulated engine)."""
    with worker_running(django_db_blocker, "echo", tmp_path_factory.mktemp("worker") / "echo.log") as worker:
        yield worker


@pytest.fixture(scope="session")
def tiny_worker(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker serving "tiny" on vLLM; the checkpoint is made on first use."""
    from django.core.management import call_command

    call_command("create_tiny_model", path=settings.LLM_MODELS["tiny"]["options"]["model"])
    log = tmp_path_factory.mktemp("vllm") / "tiny.log"
    with worker_running(django_db_blocker, "tiny", log, timeout=240, stop_timeout=60) as worker:
        yield worker


def wait_for(predicate: Callable[[], Any], *, timeout: float = 20, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
