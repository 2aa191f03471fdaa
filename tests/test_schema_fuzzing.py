"""Schemathesis against the served schema (``/api/schema/``, the REST API and ``/v1/``):
no input, valid or not, gets a 5xx.

A live server, as production runs it, whose registry holds only ``echo`` (the
session's worker serves it: a 503 for want of a worker would hide a real one)
with a small context window, so that generated completions stay short.
Schemathesis's own runner (``st run``, in a subprocess): its coverage phase
(boundary values, wrong types, missing fields, for every operation) and its
fuzzing phase, both bounded (``MAX_EXAMPLES`` per operation) and seeded
(``SEED``), so a failure reproduces. (Its pytest plugin reads an attribute
pytest 9 no longer has.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.conftest import ApiUser
from tests.openai_api.conftest import ServerProcess, start_server

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

MAX_EXAMPLES = 25  # per operation and phase
SEED = 1


@pytest.fixture(scope="module")
def fuzzed_server(django_db_blocker, tmp_path_factory, echo_worker) -> Iterator[ServerProcess]:
    echo = {**settings.LLM_MODELS["echo"], "max_model_len": 96, "default_max_tokens": 8}
    server = start_server(
        django_db_blocker,
        tmp_path_factory.mktemp("fuzz") / "uvicorn.log",
        LLM_MODELS=json.dumps({"echo": echo}),
        LLM_DEFAULT_MODEL="echo",
    )
    try:
        yield server
    finally:
        server.stop()


def _narrow(node: Any, known: dict[str, Any]) -> None:
    """Narrow the schema so that valid cases reach the services, not a 400 or 404 at
    once: ``model`` to the served model, path parameters to objects of the key's
    owner, chat messages to text, answers to a few tokens. Invalid cases still get
    anything."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict):
            if isinstance(properties.get("model"), dict):
                properties["model"] = {"type": "string", "enum": ["echo"]}
            for name in ("max_tokens", "max_completion_tokens"):  # short answers
                if isinstance(properties.get(name), dict):
                    properties[name] = {"type": "integer", "minimum": 1, "maximum": 16}
            if "role" in properties and "content" in properties:  # a chat message: text
                properties["content"] = {"type": "string"}
                node["required"] = sorted({*node.get("required", []), "content"})
        if node.get("in") == "path" and node.get("name") in known:
            node["schema"] = {"type": "integer", "enum": [known[node["name"]]]}
        for value in node.values():
            _narrow(value, known)
    elif isinstance(node, list):
        for value in node:
            _narrow(value, known)


def test_no_input_gets_a_server_error(fuzzed_server: ServerProcess, api_user: ApiUser, tmp_path) -> None:
    root = fuzzed_server.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_user.key}"}
    http = httpx.Client(base_url=root, headers=headers, timeout=30)
    conversation = http.post("/api/conversations/", json={"title": "fuzzed"}).json()["id"]
    posted = http.post(f"/api/conversations/{conversation}/messages/", json={"content": "hi"})
    schema = http.get("/api/schema/?format=json").json()
    _narrow(schema, {"conversation_id": conversation, "job_id": posted.json()["job"]["id"]})
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    run = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "run", str(tmp_path / "schema.json")),
            *("--url", root, "-H", f"Authorization: Bearer {api_user.key}"),
            *("--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing"),
            *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--no-color"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    summary = run.stdout[run.stdout.find("SUMMARY") :]
    print(summary)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Tested: 12" in summary  # every operation of the REST API and /v1/
