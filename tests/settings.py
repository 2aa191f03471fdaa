"""Test settings: the real settings, pointed at a Redis database of the tests' own.

Workers started by the tests use this module too, so both sides agree on the
model registry and Redis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def _test_redis_url() -> str:
    if os.environ.get("TEST_REDIS_URL"):
        return os.environ["TEST_REDIS_URL"]
    # Same server as the app, database 15, so a `make run` beside the tests
    # keeps its queues and streams.
    parts = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return urlunsplit((parts.scheme, parts.netloc, "/15", parts.query, parts.fragment))


TINY_MODEL_PATH = os.environ.get(
    "LLM_TINY_MODEL_PATH", str(Path(__file__).resolve().parent.parent / "var" / "models" / "tiny")
)

TEST_MODELS = {
    # The real engine: vLLM (CPU build) on the tiny local checkpoint, with a
    # small window so that tests can overflow it.
    "tiny": {
        "engine": "vllm",
        "description": "vLLM on the tiny local checkpoint",
        "max_model_len": 512,
        "default_max_tokens": 32,
        "options": {
            "model": TINY_MODEL_PATH,
            "max_num_seqs": 32,
            "dtype": "float32",
            "enforce_eager": True,
            "kv_cache_memory_bytes": 256 * 1024 * 1024,
        },
        "gpus": [],
    },
    "echo": {
        "engine": "simulated",
        "description": "simulated engine for tests",
        "max_model_len": 4096,
        "default_max_tokens": 32,
        "options": {"max_num_seqs": 64, "step_time": 0.01, "step_time_per_seq": 0.0002},
        "gpus": [],
    },
    # Slow enough to watch an answer stream in (tests/browser): 16 to 48 tokens of
    # 0.1 s each, every token its own delta.
    "slow": {
        "engine": "simulated",
        "description": "simulated engine, one token every 0.1 s",
        "max_model_len": 4096,
        "default_max_tokens": 48,
        "options": {"max_num_seqs": 8, "step_time": 0.1, "step_time_per_seq": 0.0},
        "gpus": [],
    },
    # No worker serves "spare" unless a test starts one: its jobs wait in the queue.
    "spare": {
        "engine": "simulated",
        "description": "simulated engine, started on demand by tests",
        "max_model_len": 4096,
        "default_max_tokens": 32,
        "options": {"max_num_seqs": 8, "step_time": 0.01, "step_time_per_seq": 0.0002},
        "gpus": [],
    },
}

os.environ["REDIS_URL"] = _test_redis_url()
# The settings refuse to start without a secret key (unless DEBUG).
os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("LLM_MODELS", json.dumps(TEST_MODELS))
os.environ.setdefault("LLM_RETRY_BACKOFF", "1")
os.environ.setdefault("LLM_DEFAULT_MODEL", "echo")
# No connection pool in the pytest process: Django's test client never returns
# its threads' connections. Workers started by the tests use the pool, as in
# production (tests.conftest.worker_env).
os.environ.setdefault("DB_POOL", "false")

from llmproject.settings import *  # noqa: E402, F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

if DATABASES["default"]["ENGINE"].endswith("sqlite3") and os.environ.get("TEST_SQLITE_TIMEOUT"):  # noqa: F405
    # The fault tests' processes give up on a write lock sooner (the lock held by the
    # test stands in for a database outage).
    DATABASES["default"]["OPTIONS"]["timeout"] = float(os.environ["TEST_SQLITE_TIMEOUT"])  # noqa: F405

if DATABASES["default"]["ENGINE"].endswith("postgresql"):  # noqa: F405
    # A test that waits on a lock fails with PostgreSQL's error instead of hanging.
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c lock_timeout=60s"  # noqa: F405
