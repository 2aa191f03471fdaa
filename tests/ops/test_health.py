"""/healthz, /readyz, and one correlation id through a request's whole story, on a stack
whose registry has one model ("probe") served by one worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.test import Client

from conversations.models import ConversationEvent, InferenceJob
from tests.conftest import WorkerProcess, wait_for
from tests.openai_api.conftest import ServerProcess, start_server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PROBE_MODELS = {
    "probe": {
        "engine": "simulated",
        "max_model_len": 4096,
        "default_max_tokens": 16,
        "options": {"max_num_seqs": 8, "step_time": 0.005},
    }
}


@dataclass
class Stack:
    server: ServerProcess
    worker: WorkerProcess
    env: dict[str, str]
    logs: Path
    django_db_blocker: Any

    def start_worker(self) -> None:
        with self.django_db_blocker.unblock():
            self.worker = WorkerProcess("probe", self.logs / "probe-worker.log", **self.env)
        self.worker.wait_ready()


@pytest.fixture(scope="module")
def probe_stack(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("probe")
    # JSON log lines, DEBUG included (the web process logs a job's publication at DEBUG).
    env = {"LLM_MODELS": json.dumps(PROBE_MODELS), "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
    server = start_server(django_db_blocker, logs / "uvicorn.log", **env)
    stack = Stack(server, None, env, logs, django_db_blocker)  # type: ignore[arg-type]
    try:
        stack.start_worker()
        yield stack
    finally:
        if stack.worker is not None:
            stack.worker.stop()
        server.stop()


def test_healthz_answers_while_the_process_runs():
    response = Client().get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_503_naming_the_model_whose_only_worker_stopped_and_200_once_it_is_back(probe_stack):
    url = f"http://127.0.0.1:{probe_stack.server.port}/readyz"
    ready = httpx.get(url)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert (body["status"], body["down"]) == ("ready", [])
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["workers"]["alive"] == {"probe": 1}

    probe_stack.worker.stop()
    down = wait_for(lambda: (r := httpx.get(url)).status_code == 503 and r, timeout=15)
    assert down.json()["status"] == "unavailable"
    assert down.json()["down"] == ["workers:probe"]
    assert down.json()["checks"]["workers"]["alive"] == {"probe": 0}

    probe_stack.start_worker()
    assert wait_for(lambda: httpx.get(url).status_code == 200, timeout=15)


def test_one_correlation_id_finds_a_requests_log_lines_events_and_job(probe_stack, api_user):
    client = openai.OpenAI(
        base_url=probe_stack.server.base_url, api_key=api_user.key, max_retries=0, timeout=30
    )
    reply = client.chat.completions.create(model="probe", messages=[{"role": "user", "content": "trace me"}])
    job = InferenceJob.objects.get(pk=int(reply.id.removeprefix("chatcmpl-")))
    correlation = str(job.correlation_id)

    kinds = set(
        ConversationEvent.objects.filter(correlation_id=job.correlation_id).values_list("kind", flat=True)
    )
    assert {"user_query_received", "inference_queued", "inference_started", "response_generated"} <= kinds

    def lines(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]

    web = [line for line in lines(probe_stack.server.log_path) if line["correlation_id"] == correlation]
    assert [line["message"] for line in web] == [f"job {job.pk} published to llm.probe"]
    worker = wait_for(
        lambda: [line for line in lines(probe_stack.worker.log_path) if line["correlation_id"] == correlation]
    )
    assert any("succeeded" in line["message"] for line in worker), worker
    assert {"time", "level", "logger", "message", "job_id"} <= set(worker[-1])
