"""A vLLM worker's metrics port: the engine's batch from its own statistics, and vLLM's
own ``vllm:*`` metrics beside ours."""

from __future__ import annotations

import httpx
import openai
import pytest

from inference import liveness
from tests.ops.conftest import scrape, value

pytestmark = [pytest.mark.vllm, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_vllm_workers_port_shows_its_batches_and_vllms_own_metrics(tiny_worker, ops_server, api_user):
    [target] = [t for t in liveness.metrics_targets() if t["labels"]["worker_model"] == "tiny"]
    url = f"http://{target['targets'][0]}/metrics"
    client = openai.OpenAI(base_url=ops_server.base_url, api_key=api_user.key, max_retries=0, timeout=120)
    client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=8,
        extra_body={"ignore_eos": True},
    )
    page = scrape(url)
    assert value(page, "llm_jobs_total", model="tiny", outcome="succeeded") >= 1
    assert value(page, "llm_engine_batch_size_count", model="tiny") >= 8  # a step per token
    assert ("llm_engine_running_sequences", frozenset({("model", "tiny")})) in page
    assert ("llm_engine_kv_cache_usage_ratio", frozenset({("model", "tiny")})) in page
    assert any(name.startswith("vllm:") for name, _ in page)  # vLLM's Prometheus stat logger
    assert httpx.get(url).status_code == 200  # this host may read it without the token
