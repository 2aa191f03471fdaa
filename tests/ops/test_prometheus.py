"""A real Prometheus (Debian's package), with the project's scrape config from ``deploy/``,
scraping the live stack while jobs run; asserted through Prometheus's HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from django.conf import settings

from conversations.management.commands.prometheus_config import prometheus_config
from tests.conftest import WorkerProcess
from tests.openai_api.conftest import ServerProcess, free_port
from tests.ops.conftest import AUTH, METRICS_TOKEN, scrape, value

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

DASHBOARD = Path(settings.BASE_DIR) / "deploy" / "grafana" / "dashboards" / "llmserve.json"


class Prometheus:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: `make test` installs it (apt-get install prometheus)")
        self.port = free_port()
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.log_path.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, predicate: Any, timeout: float = 30) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            current = self.scalar(expr)
            if predicate(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} = {current} after {timeout} s")
            time.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(ops_server: ServerProcess, tmp_path: Path) -> Iterator[Prometheus]:
    token_file = tmp_path / "metrics_token"
    token_file.write_text(METRICS_TOKEN)
    config = prometheus_config(web=f"127.0.0.1:{ops_server.port}", token_file=str(token_file), interval="1s")
    server = Prometheus(config, tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        target["expr"].replace("$model", ".*").replace("$__rate_interval", "1m")
        for panel in panels
        for target in panel["targets"]
    ]


def test_prometheus_scrapes_the_web_process_and_every_worker_and_counts_the_jobs(
    prometheus, ops_server, echo_worker: WorkerProcess, api_user
):
    # Both jobs of the config are up: the web process by its address, the worker
    # found through /metrics/targets; both with the token.
    prometheus.wait_for('sum(up{job="llmserve-web"})', lambda v: v == 1)
    prometheus.wait_for('sum(up{job="llmserve-workers", worker_model="echo"})', lambda v: v == 1)
    targets = httpx.get(f"http://127.0.0.1:{ops_server.port}/metrics/targets", headers=AUTH).json()
    [target] = [t for t in targets if t["labels"]["worker_model"] == "echo"]
    worker_page = scrape(f"http://{target['targets'][0]}/metrics")
    before = value(worker_page, "llm_jobs_total", model="echo", outcome="succeeded")

    client = openai.OpenAI(base_url=ops_server.base_url, api_key=api_user.key, max_retries=0, timeout=30)
    jobs = 6
    for i in range(jobs):  # half of them streamed
        messages = [{"role": "user", "content": f"job {i}"}]
        if i % 2:
            for _chunk in client.chat.completions.create(model="echo", messages=messages, stream=True):
                pass
        else:
            client.chat.completions.create(model="echo", messages=messages)

    succeeded = 'sum(llm_jobs_total{model="echo", outcome="succeeded"})'
    assert prometheus.wait_for(succeeded, lambda v: v is not None and v >= before + jobs) == before + jobs
    ttft = prometheus.scalar('sum(llm_job_time_to_first_token_seconds_count{model="echo"})')
    assert ttft is not None and ttft >= jobs
    assert prometheus.scalar('sum(llm_workers_alive{model="echo"})') == 1
    assert prometheus.scalar('sum(llm_queue_depth{model="echo"})') == 0
    assert prometheus.query('llm_engine_batch_size_count{model="echo"}')
    chats = prometheus.scalar(
        'sum(django_http_responses_total_by_status_view_method_total{view="openai-chat-completions"})'
    )
    assert chats is not None and chats >= jobs
    # Every query of the Grafana dashboard is valid PromQL here, and the per-model ones have data.
    for expr in dashboard_queries():
        prometheus.query(expr)
    p95 = (
        "histogram_quantile(0.95, sum by (le, model) (rate(llm_job_time_to_first_token_seconds_bucket[1m])))"
    )
    assert prometheus.query(p95)
