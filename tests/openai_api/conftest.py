"""A live web server (uvicorn, as in production) for the official ``openai`` client.

It runs in a subprocess against the test database and the tests' Redis, with
the session's ``echo`` worker behind it; tests talk to it over real HTTP.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ROOT, ApiUser, WorkerProcess, worker_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``uvicorn llmproject.asgi:application`` in a subprocess, with its log in a file."""

    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "llmproject.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=worker_env(**{"PORT": str(self.port), **env}),  # as make run sets it
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                httpx.get(f"{self.base_url}/models", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_server(django_db_blocker: Any, log_path: Path, **env: str) -> ServerProcess:
    with django_db_blocker.unblock():
        server = ServerProcess(log_path, **env)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def openai_server(
    django_db_setup: None,
    django_db_blocker: Any,
    echo_worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    server = start_server(django_db_blocker, tmp_path_factory.mktemp("server") / "uvicorn.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(openai_server: ServerProcess, api_user: ApiUser) -> openai.OpenAI:
    # No retries: a refused request must show up as refused, not be sent again.
    return openai.OpenAI(base_url=openai_server.base_url, api_key=api_user.key, max_retries=0, timeout=60)


@pytest.fixture
def async_client(openai_server: ServerProcess, api_user: ApiUser) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=openai_server.base_url, api_key=api_user.key, max_retries=0, timeout=60
    )


@pytest.fixture
def make_client() -> Callable[[ServerProcess, str], openai.OpenAI]:
    def make(server: ServerProcess, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)

    return make
