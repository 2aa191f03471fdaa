"""The web process serves the site without the worker runtime, an engine, vLLM or torch.

(``make lint`` checks the same of the code's imports; this checks what a web
process has really loaded after it answered requests.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, worker_env
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db(transaction=True)

# Serve a REST message post, the OpenAI model list and a chat completion (refused by
# admission: no worker serves "spare") through the ASGI application, then list the
# modules of the worker side that are loaded.
_SCRIPT = """
import asyncio, json, os, sys
import httpx
from llmproject.asgi import application

async def main():
    headers = {"Authorization": "Bearer " + os.environ["KEY"]}
    transport = httpx.ASGITransport(app=application)
    base = "http://testserver"
    async with httpx.AsyncClient(transport=transport, base_url=base, headers=headers) as client:
        posted = await client.post(
            "/api/conversations/%s/messages/" % os.environ["CONVERSATION"], json={"content": "hello there"}
        )
        models = await client.get("/v1/models")
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "spare", "messages": [{"role": "user", "content": "hi"}]},
        )
    return [posted.status_code, models.status_code, chat.status_code]

statuses = asyncio.run(main())
allowed = {"workers", "workers.apps", "workers.signals"}
loaded = sorted(
    name for name in sys.modules
    if (name.startswith("workers.") and name not in allowed)
    or name.startswith(("inference.engines", "conversations.streams.publisher"))
    or name.split(".")[0] in ("vllm", "torch", "transformers")
)
print(json.dumps({"statuses": statuses, "loaded": loaded}))
"""


def test_the_web_process_never_loads_the_worker_runtime_or_an_engine(api_user):
    conversation = ConversationFactory(owner=api_user.user, model="echo")
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=worker_env(KEY=api_user.key, CONVERSATION=str(conversation.pk)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    # The requests really went through: a message queued, the models listed, and the
    # chat completion refused for want of a worker (503), all in this process.
    assert report["statuses"] == [202, 200, 503]
    assert report["loaded"] == []
