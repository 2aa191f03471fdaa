"""A stack of real processes of the fault tests' own, and the faults they inject into it.

The stack: a redis-server on a free port (the tests restart it, with and
without persistence; the machine's Redis is never touched), the web server
(uvicorn), two workers of model ``echo`` (``run_workers echo --group 0`` and
``--group 1``: two GPU groups' worth, on one host) and the reconciler
(``manage.py reconcile``), all pointed at that Redis and at the test database.
On PostgreSQL the workers and the reconciler reach the database through a
TCP proxy the tests can cut; on SQLite a write lock held by the test stands in
for an outage.

It lives for the package (tests/faults) and is torn down before any other
test runs: its reconciler would take back the jobs of the session's own
workers, whose heartbeats live in another Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from celery import Celery
from django.conf import settings
from django.db import connection
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection, connect

from conversations.models import InferenceJob
from tests.conftest import ROOT, WorkerProcess, _database_url, wait_for, worker_env
from tests.openai_api.conftest import ServerProcess, free_port

# Two workers of "echo" (CPU groups 0 and 1), four answers at a time each: a
# burst of jobs both runs and waits in the queue.
STACK_MODELS = {
    "echo": {
        "engine": "simulated",
        "description": "simulated engine, for fault tests",
        "max_model_len": 4096,
        "default_max_tokens": 32,
        "options": {"max_num_seqs": 4, "step_time": 0.01, "step_time_per_seq": 0.0002},
        "cpus": ["0", "1"],
    }
}
FINAL_STATES = {"succeeded", "failed", "cancelled"}


class RedisServer:
    """A redis-server of the tests' own, restartable on its port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.persistent = False
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, persistent: bool) -> None:
        if not persistent:
            for path in self.dir.glob("*"):
                if path.name != "redis.log":
                    subprocess.run(["rm", "-rf", str(path)], check=True)
        self.persistent = persistent
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes" if persistent else "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            cwd=self.dir,
        )
        client = redis.Redis.from_url(self.url)
        try:
            wait_for(lambda: _answers(client), timeout=10)
        finally:
            client.close()

    def crash(self) -> None:
        """SIGKILL: what is not on disk is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def shutdown(self) -> None:
        """A clean stop (``SHUTDOWN``): with persistence, everything is on disk."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(redis.exceptions.ConnectionError):
                redis.Redis.from_url(self.url).shutdown()
            self.proc.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


class TcpProxy:
    """Forwards a local port to PostgreSQL's; ``cut()`` drops every connection and refuses
    new ones until ``restore()``: a database outage as its clients see it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.cut_now = False
        threading.Thread(target=self._accept, daemon=True, name="db-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut_now:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
                with self._lock:
                    self._open.discard(s)

    def cut(self) -> None:
        self.cut_now = True
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.cut_now = False

    def close(self) -> None:
        self.cut()
        self._listener.close()


class DatabaseOutage:
    """Cuts the stack's database: the proxy on PostgreSQL; on SQLite the test holds the
    write lock (the stack's processes give up on it after a second, as on a dead server)."""

    def __init__(self) -> None:
        db = connection.settings_dict
        self.proxy: TcpProxy | None = None
        self.url = _database_url()
        if connection.vendor == "postgresql":
            self.proxy = TcpProxy((db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432)))
            self.url = self.url.replace(f"@{db.get('HOST') or 'localhost'}", "@127.0.0.1", 1)
            host_port = self.url.split("@", 1)[1].split("/", 1)[0]
            self.url = self.url.replace(host_port, f"127.0.0.1:{self.proxy.port}", 1)
        self._lock: sqlite3.Connection | None = None

    def start(self) -> None:
        if self.proxy is not None:
            self.proxy.cut()
        else:
            self._lock = sqlite3.connect(connection.settings_dict["NAME"], timeout=30)
            self._lock.execute("BEGIN IMMEDIATE")

    def end(self) -> None:
        if self.proxy is not None:
            self.proxy.restore()
        elif self._lock is not None:
            self._lock.rollback()
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        self.end()
        if self.proxy is not None:
            self.proxy.close()


class StackWorker(WorkerProcess):
    """A worker of the stack: ready once it beats in the stack's Redis."""

    def __init__(self, stack: FaultStack, group: int) -> None:
        self.stack = stack
        self.group = group
        self.restarts = 0
        self._spawn()

    def _spawn(self) -> None:
        log = self.stack.logs / f"echo-{self.group}.{self.restarts}.log"
        super().__init__("echo", log, group=self.group, **self.stack.env)
        self.pid: int | None = None

    def _celery_pid(self) -> int | None:
        """The Celery worker process its launcher started."""
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        return next((c.pid for c in children if "celery" in " ".join(c.cmdline())), None)

    def beat_member(self) -> str | None:
        """Its entry in the heartbeats, once it beats."""
        if self.pid is None:
            self.pid = self._celery_pid()
        if self.pid is None:
            return None
        members = self.stack.redis_client.zrangebyscore(
            "llm:workers:echo", time.time() - settings.LLM_HEARTBEAT_TTL, "+inf"
        )
        return next((m for m in members if m.endswith(f":{self.pid}")), None)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            if self.beat_member() is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout} s:\n{self.output()}")

    @property
    def worker_id(self) -> str:
        """What its jobs' ``worker`` field holds while it runs them."""
        assert self.pid is not None
        return f"{self.name}:{self.pid}"

    def runs(self, job: InferenceJob) -> bool:
        """Whether ``job`` was claimed by this worker (this process or an earlier one of
        the same name)."""
        return job.worker.split(":", 1)[0] == self.name

    def kill(self) -> float:
        """SIGKILL the Celery worker (its launcher then exits); returns the time (unix)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        killed = time.time()
        self.proc.wait(30)
        self.log.close()
        return killed

    def respawn(self) -> None:
        """Start it again (under the same node name: a new worker id), not waiting."""
        self.stop()
        self.restarts += 1
        self._spawn()

    def restart(self) -> None:
        self.respawn()
        self.wait_ready()


class FaultStack:
    def __init__(self, logs: Path, django_db_blocker: Any) -> None:
        self.logs = logs
        self.redis = RedisServer(logs / "redis")
        self.redis.dir.mkdir()
        self.redis.start(persistent=True)
        self.redis_client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        self.database = DatabaseOutage()
        self.env = {
            "REDIS_URL": self.redis.url,
            "TEST_REDIS_URL": self.redis.url,
            "DATABASE_URL": self.database.url,
            "LLM_MODELS": json.dumps(STACK_MODELS),
            "LLM_DEFAULT_MODEL": "echo",
            "TEST_SQLITE_TIMEOUT": "1",
        }
        self.workers: list[StackWorker] = []
        self.web: ServerProcess | None = None
        self.reconciler: subprocess.Popen[bytes] | None = None
        with django_db_blocker.unblock():
            # The web server reaches the database directly: the outage is the workers'.
            self.web = ServerProcess(logs / "web.log", **{**self.env, "DATABASE_URL": _database_url()})
            self.workers = [StackWorker(self, 0), StackWorker(self, 1)]
            self._reconciler_log = (logs / "reconciler.log").open("wb")
            self.reconciler = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "reconcile"],
                env=worker_env(**self.env),
                stdout=self._reconciler_log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.web.wait_ready()
        for worker in self.workers:
            worker.wait_ready()
        # A Celery app on the stack's broker, to deliver a job once more.
        self.celery = Celery("faults", set_as_current=False)
        self.celery.config_from_object("django.conf:settings", namespace="CELERY")
        self.celery.conf.broker_url = self.redis.url

    @property
    def base_url(self) -> str:
        assert self.web is not None
        return f"http://127.0.0.1:{self.web.port}"

    def close(self) -> None:
        self.database.end()
        if self.reconciler is not None and self.reconciler.poll() is None:
            self.reconciler.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.reconciler.wait(10)
            if self.reconciler.poll() is None:
                self.reconciler.kill()
        for worker in self.workers:
            worker.stop()
        if self.web is not None:
            self.web.stop()
        self.redis.crash()
        self.database.close()

    # --- health between faults -------------------------------------------------
    def ensure_healthy(self) -> None:
        """Every part up: both workers beating and consuming, the reconciler running."""
        assert self.reconciler is not None and self.reconciler.poll() is None, self.reconciler_output()
        for worker in self.workers:
            if worker.proc.poll() is not None:
                worker.restart()
            else:
                worker.wait_ready()
        wait_for(lambda: all(w.beat_member() for w in self.workers), timeout=30)
        # A worker declares its queue when it (re)connects; publishing before that drops.
        wait_for(lambda: self.redis_client.exists("_kombu.binding.llm.echo"), timeout=30)

    def restart_redis(self, *, persistent: bool, down_for: float) -> tuple[datetime, datetime]:
        """Stop Redis (cleanly if it keeps its data, else a crash) and start it again;
        returns when it went down and when it answered again."""
        if persistent:
            self.redis.shutdown()
        else:
            self.redis.crash()
        down = datetime.now(UTC)
        time.sleep(down_for)
        self.redis.start(persistent=persistent)
        return down, datetime.now(UTC)

    def reset_redis(self) -> None:
        """Drop what earlier tests left in the stack's Redis under ids the test database
        reuses (SQLite starts ids again after a flush): streams, stashes, messages."""
        patterns = ("llm:{conv:*", "llm:answer:*", "llm:reconciler:republished:*", "llm.echo*")
        keys = [k for p in patterns for k in self.redis_client.scan_iter(p, count=1000)]
        keys += ["unacked", "unacked_index"]
        self.redis_client.delete(*keys)

    def reconciler_output(self) -> str:
        self._reconciler_log.flush()
        return (self.logs / "reconciler.log").read_text(errors="replace")[-5000:]

    # --- the clients' side ---------------------------------------------------------
    def post(self, key: str, conversation_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(
            f"{self.base_url}/api/conversations/{conversation_id}/messages/",
            json=payload,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return response.json()

    def cancel(self, key: str, job_id: int) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/api/jobs/{job_id}/cancel/",
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    def watch(self, key: str, conversation_id: int) -> StreamWatcher:
        return StreamWatcher(f"ws://127.0.0.1:{self.web.port}", key, conversation_id)  # type: ignore[union-attr]


class StreamWatcher:
    """A WebSocket client of one conversation, in a thread: it records every event and,
    whenever the socket drops (or ``reconnect()`` asks), connects again with
    ``?after=<the last seq it saw>``, as the README tells clients to."""

    def __init__(self, base: str, key: str, conversation_id: int) -> None:
        self.url = f"{base}/ws/conversations/{conversation_id}/"
        self.key = key
        self.events: list[dict[str, Any]] = []
        self.last_seq: int | None = None
        self.connections = 0
        self._socket: ClientConnection | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"ws-{conversation_id}")
        self._thread.start()
        assert self._connected.wait(15), "the WebSocket did not connect"

    def _run(self) -> None:
        while not self._stop.is_set():
            query = "" if self.last_seq is None else f"?after={self.last_seq}"
            try:
                with connect(
                    self.url + query,
                    additional_headers={"Authorization": f"Bearer {self.key}"},
                    open_timeout=5,
                ) as ws:
                    self._socket = ws
                    hello = json.loads(ws.recv(timeout=5))
                    assert hello["event"] == "hello", hello
                    self.connections += 1
                    self._connected.set()
                    while not self._stop.is_set():
                        try:
                            event = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if "seq" in event:
                            self.events.append(event)
                            self.last_seq = event["seq"]
            except (WebSocketException, OSError, TimeoutError, AssertionError, json.JSONDecodeError):
                time.sleep(0.2)
            finally:
                self._socket = None

    def reconnect(self) -> None:
        socket_ = self._socket
        if socket_ is not None:
            socket_.close()

    def final(self, message_id: int) -> dict[str, Any] | None:
        """The client's last word on the message: its final event, if it came after the
        message's last ``started``."""
        final = None
        for event in list(self.events):
            if event.get("message_id") != message_id:
                continue
            if event["event"] == "started":
                final = None
            elif event["event"] in ("completed", "failed", "cancelled"):
                final = event
        return final

    def close(self) -> None:
        self._stop.set()
        self.reconnect()
        self._thread.join(5)


@pytest.fixture(scope="package")
def stack(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path_factory.mktemp("faults"), django_db_blocker)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def healthy_stack(stack: FaultStack) -> FaultStack:
    stack.ensure_healthy()
    stack.reset_redis()
    return stack


def jobs_of(job_ids: list[int]) -> dict[int, InferenceJob]:
    return InferenceJob.objects.select_related("message").in_bulk(job_ids)


def wait_until_final(job_ids: list[int], *, timeout: float = 30) -> dict[int, InferenceJob]:
    """Every job in a final state within ``timeout`` seconds; fails naming those that are not."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_of(job_ids)
        stuck = {pk: job.state for pk, job in jobs.items() if job.state not in FINAL_STATES}
        if not stuck:
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not final after {timeout} s: {stuck}")
        time.sleep(0.1)
