"""scripts/run.sh (`make run`), for real: up, the printed URLs answer, Ctrl-C stops it all.

The script runs in a copy of the project (its own var/: logs, demo user,
static files; a temporary SQLite database), against database 12 of the tests'
Redis server, with a registry of one simulated model, so that it is up in
about 15 seconds. Ctrl-C is a SIGINT to the script's process group, as a
terminal sends it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import pytest
from django.conf import settings
from websockets.sync.client import connect

from tests.conftest import ROOT

MODELS = {
    "echo": {"engine": "simulated", "max_model_len": 4096, "options": {"max_num_seqs": 8, "step_time": 0.01}}
}
# The tests' Redis server, database 12: the tests' own database has their echo
# worker, which would take this stack's jobs.
REDIS_URL = urlunsplit(urlsplit(settings.REDIS_URL)._replace(path="/12"))
BANNER_END = "Ctrl-C stops everything."


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project sharing its .venv: run.sh writes var/ beside itself."""
    copy = tmp_path_factory.mktemp("run") / "project"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "var", ".env", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"
        ),
    )
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Banner:
    user: str
    password: str
    key: str
    urls: list[str]


class RunScript:
    """scripts/run.sh in its own process group with SIGINT at its default, as from a terminal."""

    def __init__(self, project: Path, database: Path) -> None:
        self.port, self.flower_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        env.update(
            LLM_MODELS=json.dumps(MODELS),
            LLM_DEFAULT_MODEL="echo",
            REDIS_URL=REDIS_URL,
            DATABASE_URL=f"sqlite:///{database}",
            PORT=str(self.port),
            FLOWER_PORT=str(self.flower_port),
        )
        self.out_path = database.parent / f"run-{self.port}.out"
        self.out = self.out_path.open("wb")
        self.proc = subprocess.Popen(
            [str(project / "scripts" / "run.sh")],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # pytest may have been started with SIGINT ignored (a background job
            # of a script), which its children would inherit: a terminal's
            # foreground job has it at its default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.started: list[psutil.Process] = []
        self.groups: set[int] = {self.proc.pid}

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_banner(self, timeout: float = 120) -> Banner:
        deadline = time.monotonic() + timeout
        while BANNER_END not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"run.sh exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no banner after {timeout} s:\n{self.output()}")
            time.sleep(0.2)
        text = self.output()
        credentials = re.search(r"user: (\S+)\s+password: (\S+)", text)
        key = re.search(r"API key\s+(\S+)", text)
        assert credentials and key, text
        table = text[text.index("is up") : text.index("Try it:")]
        self.started = psutil.Process(self.proc.pid).children(recursive=True)
        # Its own process group, and each worker's (recorded now: a group
        # outlives its leader).
        for process in self.started:
            try:
                self.groups.add(os.getpgid(process.pid))
            except ProcessLookupError:
                pass
        return Banner(*credentials.groups(), key.group(1), re.findall(r"http://\S+", table))

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def leftovers(self) -> list[psutil.Process]:
        """Processes it started, or in their groups, still running."""
        left = []
        for process in psutil.process_iter(["status"]):
            try:
                in_group = os.getpgid(process.pid) in self.groups
            except ProcessLookupError:
                continue
            alive = process.info["status"] != psutil.STATUS_ZOMBIE
            if alive and (in_group or process in self.started):
                left.append(process)
        return left

    def left_running(self) -> list[str]:
        return [command(p) for p in self.leftovers()]

    def kill(self) -> None:
        """Whatever is left, after a failed test."""
        for process in self.leftovers():
            if process.pid != self.proc.pid:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


@pytest.fixture
def run_script(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunScript]:
    # One database for the module: the second run finds it migrated.
    database = tmp_path_factory.getbasetemp() / "run-db.sqlite3"
    run = RunScript(project, database)
    try:
        yield run
    finally:
        run.kill()


def command(process: psutil.Process) -> str:
    """Its command line; empty once it has exited (the banner's `cat` may have)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_it_comes_up_with_urls_that_answer_and_ctrl_c_stops_everything(run_script):
    banner = run_script.wait_banner()
    started = "\n".join(map(command, run_script.started))
    # The worker shows its name (Celery retitles its process).
    for part in ("uvicorn", "run_workers", "echo-0@", "celery -A llmproject flower"):
        assert part in started

    web = f"http://127.0.0.1:{run_script.port}"
    flower = f"http://127.0.0.1:{run_script.flower_port}/"
    assert f"{web}/api/docs/" in banner.urls
    assert flower in banner.urls
    bearer = {"Authorization": f"Bearer {banner.key}"}
    for url in banner.urls:
        if url == flower:
            assert httpx.get(url, timeout=10).status_code == 401
            response = httpx.get(url, auth=(banner.user, banner.password), timeout=10)
        else:
            response = httpx.get(url, headers=bearer, follow_redirects=True, timeout=10)
        assert response.status_code == 200, url

    # The banner's "try it", and a WebSocket left open over the stop, as a browser's would be.
    created = httpx.post(f"{web}/api/conversations/", headers=bearer, json={"title": "hello"}, timeout=10)
    assert created.status_code == 201, created.text
    ws_url = f"ws://127.0.0.1:{run_script.port}{created.json()['websocket']}"
    with connect(ws_url, origin=web, additional_headers=bearer, open_timeout=10) as websocket:
        assert json.loads(websocket.recv(timeout=10))["event"] == "hello"
        began = time.monotonic()
        run_script.interrupt()
        status = run_script.wait(timeout=60)
    output = run_script.output()
    assert status == 0, output
    assert output.rstrip().endswith("stopped"), output
    assert "a process exited" not in output
    assert "exited by itself" not in output
    assert "killed" not in output  # each part stopped on its own
    assert time.monotonic() - began < 30
    assert run_script.left_running() == []


def test_a_part_that_dies_ends_it_with_its_name_and_log_and_one_that_hangs_is_killed(run_script):
    run_script.wait_banner()
    (flower,) = [p for p in run_script.started if "flower" in command(p)]
    (web,) = [p for p in run_script.started if "uvicorn" in command(p)]
    # A web server that cannot stop (stopped itself): killed once its grace is over.
    web.suspend()
    flower.kill()
    status = run_script.wait(timeout=60)
    output = run_script.output()
    assert status == 1, output
    assert "flower exited by itself (killed by SIGKILL)" in output
    assert "var/log/flower.log" in output
    assert re.search(r"web still running after \d+ s: killed", output), output
    assert output.rstrip().endswith("stopped"), output
    assert run_script.left_running() == []
