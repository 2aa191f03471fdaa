"""A live stack for the operations tests: uvicorn (as in production) with its metrics behind
a token, beside the session's ``echo`` worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import WorkerProcess
from tests.openai_api.conftest import ServerProcess, start_server

METRICS_TOKEN = "test-metrics-token"
AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a metrics page by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(page: Samples, name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


def scrape(url: str) -> Samples:
    response = httpx.get(url, headers=AUTH, timeout=10)
    response.raise_for_status()
    return samples(response.text)


@pytest.fixture(scope="session")
def ops_server(
    django_db_setup: None,
    django_db_blocker: Any,
    echo_worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """The web server with ``/metrics`` for the token only (no address is enough)."""
    server = start_server(
        django_db_blocker,
        tmp_path_factory.mktemp("ops") / "uvicorn.log",
        METRICS_TOKEN=METRICS_TOKEN,
        METRICS_ALLOWED_IPS="",
    )
    try:
        yield server
    finally:
        server.stop()
