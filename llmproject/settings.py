"""Settings, read from the environment in this one place (django-environ).

Grouped by concern: core, database, Redis, API, Channels, Celery, inference.
Every variable has a default that works for `make run` on a laptop.
"""

from __future__ import annotations

import json
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"  # SQLite database, local models, run state
VAR_DIR.mkdir(exist_ok=True)
(VAR_DIR / "static").mkdir(exist_ok=True)  # whitenoise warns when STATIC_ROOT is missing

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def _secret_key(debug: bool) -> str:
    """SECRET_KEY, else the file SECRET_KEY_FILE names (default var/secret_key, which
    `make run` generates; a Docker secret's path, say); a public development key
    only with DEBUG. Sessions, password resets and signed data all rest on it: a
    server never starts on a key anyone can read here."""
    path = Path(env.str("SECRET_KEY_FILE", default=str(VAR_DIR / "secret_key")))
    key = env.str("SECRET_KEY", default="") or (path.read_text().strip() if path.is_file() else "")
    if key:
        return key
    if debug:
        return "dev-insecure-change-me-0123456789abcdefghijklmnopqrstuvwxyz"
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "SECRET_KEY is not set: set it in the environment (e.g. the output of "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'), or DEBUG=true for development"
    )


# --- Core -------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = _secret_key(DEBUG)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "conversations",
    "inference",
    "openai_api",
    "workers",
    "chat",
]

MIDDLEWARE = [
    # Prometheus: requests, latencies, statuses by view (/v1/ has no middleware:
    # llmproject.handlers counts its requests in the same families).
    "llmproject.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's and API docs' static files from the ASGI server.
    "llmproject.middleware.AsyncWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "llmproject.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "llmproject.urls"
ASGI_APPLICATION = "llmproject.asgi.application"
# The WebSocket URLs and their authentication, as ROOT_URLCONF is for HTTP.
WEBSOCKET_APPLICATION = "conversations.routing.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Browser chat -----------------------------------------------------------
# People log in on the chat's own pages (the admin keeps its login at /admin/login/).
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# --- Database ---------------------------------------------------------------
# PostgreSQL when DATABASE_URL says so; otherwise an embedded SQLite file.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Worker threads write concurrently: IMMEDIATE takes the write lock up
    # front (no deadlocked upgrades) and the timeout makes writers wait instead
    # of failing with "locked". WAL (readers beside the writer) is set once, on
    # migrate (conversations.apps): it stays in the file, and asking for it on
    # every connection waits on other connections' locks.
    # https://docs.djangoproject.com/en/5.2/ref/databases/#sqlite-transaction-behavior
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
elif env.bool("DB_POOL", default=True):
    # PostgreSQL: one pool of connections per process (Django's psycopg_pool
    # support), shared by the web server's request threads and a worker's task
    # threads. Without it every request, WebSocket connect and task opens a new
    # server session, which cost more CPU than the queries themselves.
    # https://docs.djangoproject.com/en/5.2/ref/databases/#connection-pool
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DB_POOL_MIN_SIZE", default=2),
        "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
        "timeout": env.float("DB_POOL_TIMEOUT", default=10),
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Parameters sent apart from the statement, not quoted into it client-side,
    # and prepared statements: a statement run DB_PREPARE_THRESHOLD times (5) on a
    # connection is prepared there, and PostgreSQL stops parsing and planning it
    # on every request (it did so for each of a request's three statements;
    # preparing took 40 % off its CPU per request). Django turns preparing off
    # unless asked, for poolers in transaction mode (PgBouncer before 1.21):
    # "none" does that.
    # https://docs.djangoproject.com/en/5.2/ref/databases/#server-side-parameters-binding
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["server_side_binding"] = env.bool("DB_SERVER_SIDE_BINDING", default=True)
    _threshold = env.str("DB_PREPARE_THRESHOLD", default="5").strip().lower()
    if _options["server_side_binding"] and _threshold not in ("", "none", "off"):
        _options["prepare_threshold"] = int(_threshold)

# django-prometheus's wrappers of the same backends: connections, statements,
# their errors and durations (a few us per statement, bench/ops_overhead.py; a
# job's claim and finish are one statement each on PostgreSQL, and the chat
# insert of /v1/ runs on a raw cursor, which is not counted).
DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace(
    "django.db.backends.", "django_prometheus.db.backends."
)

# --- Redis ------------------------------------------------------------------
# One Redis serves as Celery broker, channel layer and stream log.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

# Django's cache, shared by every web process: DRF's throttles count each
# client's requests here, so a rate limit holds across processes and hosts.
CACHES = {
    "default": {
        "BACKEND": "llmproject.cache.RedisCache",  # Django's, with hit/miss counters
        "LOCATION": env.str("CACHE_URL", default=REDIS_URL),
        "KEY_PREFIX": "cache",
    }
}

# --- API --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "conversations.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "llmproject.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "llmproject.exception_handler.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Rates of the throttles named in OPENAI_API_THROTTLE_CLASSES, by scope:
    # API_THROTTLE_RATES=user=60/min,anon=10/min
    "DEFAULT_THROTTLE_RATES": env.dict("API_THROTTLE_RATES", default={}),
}
# The OpenAPI schema (/api/schema/, docs at /api/docs/), tests/*/test_schema.py
# check real responses against it.
SPECTACULAR_SETTINGS = {
    "TITLE": "LLM serving platform API",
    "DESCRIPTION": (
        "Post chat messages, follow inference jobs, stream answers (`/api/`); "
        "OpenAI-compatible chat completions (`/v1/`)."
    ),
    "VERSION": "0.1.0",
    # 3.1: schemas are JSON Schema 2020-12, the dialect pydantic writes the OpenAI
    # API's bodies in (3.0 has no `type: "null"`, and its `nullable` is not JSON Schema).
    "OAS_VERSION": "3.1.0",
    # Tags and operation ids come from the path after this; left unset,
    # drf-spectacular takes the paths' common prefix, "/" once /v1/ is in.
    "SCHEMA_PATH_PREFIX": "/api/",
    # /v1/ is served by plain async Django views, which drf-spectacular cannot
    # see; this hook documents them (openai_api/openapi.py).
    "PREPROCESSING_HOOKS": ["openai_api.openapi.add_openai_endpoints"],
    "ENUM_NAME_OVERRIDES": {"OpenAIErrorTypeEnum": "openai_api.openapi.ERROR_TYPES"},
    "TAGS": [
        {"name": "conversations", "description": "Conversations and their messages."},
        {"name": "jobs", "description": "The inference job answering a message."},
        {"name": "models", "description": "The models of the registry."},
        {"name": "openai", "description": "OpenAI-compatible API."},
    ],
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}
# A web process remembers a valid API key this long: a revoked key (or a
# deactivated user) is refused by every process within this time. 0: no cache.
API_KEY_CACHE_SECONDS = env.float("API_KEY_CACHE_SECONDS", default=10)
# A user message longer than this is refused with a 400.
LLM_MAX_MESSAGE_CHARS = env.int("LLM_MAX_MESSAGE_CHARS", default=32_000)

# --- Channels ---------------------------------------------------------------
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # Reads time out (a half-open connection must not hang a consumer
            # forever), well above channels-redis's own 5 s BZPOPMIN, so an idle
            # consumer's blocking read is never cut short (redis-py 8's default
            # of 5 s did that, killing the WebSocket).
            "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
            "prefix": "llm:channels:",
            # group_send silently drops messages for a channel holding
            # `capacity` unread ones (default 100). Raise it, and let the
            # consumer fill any gap from the per-conversation Redis stream
            # (conversations.streams), which never drops.
            "capacity": env.int("CHANNEL_CAPACITY", default=2000),
            "expiry": 60,
        },
    }
}
# Events kept per conversation for reconnecting clients to catch up.
LLM_STREAM_MAXLEN = env.int("LLM_STREAM_MAXLEN", default=10_000)
LLM_STREAM_TTL_SECONDS = env.int("LLM_STREAM_TTL_SECONDS", default=7 * 24 * 3600)
# The first token of an answer goes out at once; after it deltas are
# coalesced and flushed every this many seconds, or every
# LLM_STREAM_FLUSH_TOKENS tokens, whichever comes first. Each flush is an
# event stored in Redis and written to every client: at 50 ms (20 updates a
# second, smooth to a reader) a loaded worker and web server spend about a
# quarter less CPU per answer than at 20 ms (docs/benchmarks.md).
LLM_STREAM_FLUSH_INTERVAL = env.float("LLM_STREAM_FLUSH_INTERVAL", default=0.05)
LLM_STREAM_FLUSH_TOKENS = env.int("LLM_STREAM_FLUSH_TOKENS", default=16)

# --- Celery -----------------------------------------------------------------
# Longest a generation may run; the worker aborts it after this. The threads
# pool has no time limits of its own: the worker enforces it around each
# generation (workers.generation).
LLM_JOB_TIME_LIMIT = env.int("LLM_JOB_TIME_LIMIT", default=600)
# An unacked message is redelivered after the visibility timeout: it must be
# longer than the longest job or a running job gets delivered twice.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
LLM_VISIBILITY_TIMEOUT = env.int("LLM_VISIBILITY_TIMEOUT", default=LLM_JOB_TIME_LIMIT + 300)
# Deliveries of one job before it is given up (covers worker crashes too).
LLM_MAX_ATTEMPTS = env.int("LLM_MAX_ATTEMPTS", default=3)
# On SIGTERM a worker lets answers in flight run this long, then requeues the rest.
LLM_SHUTDOWN_GRACE = env.float("LLM_SHUTDOWN_GRACE", default=30)
# Retry n waits a random time up to LLM_RETRY_BACKOFF * 2**n seconds (max 60).
LLM_RETRY_BACKOFF = env.int("LLM_RETRY_BACKOFF", default=2)

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": LLM_VISIBILITY_TIMEOUT,
    # Priorities 0 (first) .. 9 on Redis are emulated with one list per step.
    # https://docs.celeryq.dev/en/stable/userguide/routing.html#redis-message-priorities
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
}
CELERY_RESULT_BACKEND = None  # job state lives in the database
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A threads-pool worker reserves concurrency x multiplier messages: 1 means a
# worker never holds a job it cannot start at once, so idle workers get them.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_DEFAULT_PRIORITY = 5
CELERY_TASK_CREATE_MISSING_QUEUES = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Flower needs task events. It shows a job from the moment a worker receives
# it; the extra "task-sent" event would cost the API a second Redis publish
# per job (about a third of the publish), so it is off unless asked for.
# Workers send the others from their start if this is true (Celery's
# ``worker_send_task_events``); Flower turns them on in every worker it sees
# anyway (its ``enable_events`` broadcast), so false means "only while Flower
# watches".
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
CELERY_TASK_SEND_SENT_EVENT = env.bool("CELERY_TASK_SEND_SENT_EVENT", default=False)
CELERY_TASK_TRACK_STARTED = True
# Publishing when the broker is down fails fast so the API can answer 503.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2}

# --- Inference --------------------------------------------------------------
# The model registry: model name -> engine, its options and GPU groups. Each
# model gets a queue "llm.<name>"; `manage.py run_workers` starts one worker
# per GPU group ("gpus": [[0], [1]]), or per CPU group on CPU hosts ("cpus":
# ["0-7", "8-15"], vLLM's thread binding), or one worker. Override with
# LLM_MODELS (JSON) or LLM_MODELS_FILE (path to a JSON file).
# The tiny local checkpoint (`manage.py create_tiny_model`; `make run` makes it):
# random weights, gibberish text, but the real vLLM engine, offline.
LLM_TINY_MODEL_PATH = env.str("LLM_TINY_MODEL_PATH", default=str(VAR_DIR / "models" / "tiny"))
LLM_DEFAULT_MODELS = {
    "tiny": {
        "engine": "vllm",
        "description": "Tiny local Llama on vLLM (random weights: the real engine, gibberish text).",
        "max_model_len": 2048,
        "default_max_tokens": 64,
        "options": {
            "model": LLM_TINY_MODEL_PATH,
            "max_num_seqs": 64,
            "dtype": "float32",
            "enforce_eager": True,
            "kv_cache_memory_bytes": 512 * 1024 * 1024,
        },
        "gpus": [],
    },
    "echo": {
        "engine": "simulated",
        "description": "Simulated engine: deterministic text, for load tests and demos.",
        "max_model_len": 8192,
        "default_max_tokens": 64,
        "options": {"max_num_seqs": 64, "step_time": 0.02, "step_time_per_seq": 0.0005},
        "gpus": [],
    },
}
# Workers refresh a heartbeat in Redis this often; one silent for the TTL
# counts as gone, and the OpenAI API answers 503 for a model with none left.
LLM_HEARTBEAT_INTERVAL = env.float("LLM_HEARTBEAT_INTERVAL", default=2.0)
LLM_HEARTBEAT_TTL = env.float("LLM_HEARTBEAT_TTL", default=6.0)
# Jobs that may wait in one model's queue (not yet taken by a worker) before
# the OpenAI API refuses new ones with 429 and Retry-After: a bounded queue
# answers "try later" instead of a timeout minutes later.
LLM_MAX_QUEUED_PER_MODEL = env.int("LLM_MAX_QUEUED_PER_MODEL", default=256)
# DRF throttle classes (dotted paths) applied to the OpenAI API, e.g.
# rest_framework.throttling.UserRateThrottle with REST_FRAMEWORK's
# DEFAULT_THROTTLE_RATES; none by default.
OPENAI_API_THROTTLE_CLASSES = env.list("OPENAI_API_THROTTLE_CLASSES", default=[])

# --- Reconciler (manage.py reconcile, one per deployment) -------------------
# How often it looks for stuck jobs. A worker's jobs run again within about
# LLM_HEARTBEAT_TTL + this after it dies (its beat must lapse first).
LLM_RECONCILE_INTERVAL = env.float("LLM_RECONCILE_INTERVAL", default=1.0)
# A queued job whose message has been nowhere in the broker (not queued, not
# just taken by a worker, not waiting for its retry time) for this long is
# published again: long enough that a message on its way is never taken for lost.
LLM_RECONCILE_GRACE = env.float("LLM_RECONCILE_GRACE", default=5.0)
# Its metrics (what it did, the job outcomes it recorded) on a port of its own,
# as a worker's: any free one when 0, "off" for none; listed by /metrics/targets.
LLM_RECONCILER_METRICS_PORT = env.str("LLM_RECONCILER_METRICS_PORT", default="0")
LLM_RECONCILER_METRICS_ADDR = env.str("LLM_RECONCILER_METRICS_ADDR", default="127.0.0.1")
LLM_RECONCILER_METRICS_HOST = env.str("LLM_RECONCILER_METRICS_HOST", default="")

if env.str("LLM_MODELS_FILE", default=""):
    LLM_MODELS = json.loads(Path(env.str("LLM_MODELS_FILE")).read_text())
else:
    LLM_MODELS = env.json("LLM_MODELS", default=LLM_DEFAULT_MODELS)
LLM_DEFAULT_MODEL = env.str("LLM_DEFAULT_MODEL", default=next(iter(LLM_MODELS)))

# --- Protection: error shapes, body size, limits ------------------------------
# Origins whose pages may open a WebSocket with the user's session cookie (a
# page elsewhere would otherwise act as the user), whatever ALLOWED_HOSTS says:
# scheme, host and port must match one (channels' OriginValidator patterns; a
# leading "." for subdomains). Default: the page `make run` serves on PORT, and
# CSRF_TRUSTED_ORIGINS. Clients with a bearer key send no cookie and skip it.
PORT = env.int("PORT", default=8000)
WEBSOCKET_ALLOWED_ORIGINS = env.list(
    "WEBSOCKET_ALLOWED_ORIGINS",
    default=[
        f"http://127.0.0.1:{PORT}",
        f"http://localhost:{PORT}",
        f"http://[::1]:{PORT}",
        *(origin.replace("://*.", "://.") for origin in CSRF_TRUSTED_ORIGINS),
    ],
)
# Errors Django answers itself (unknown URL, body too large, uncaught exception)
# come out in the JSON shape of the API whose prefix the path has
# (llmproject.error_views); other paths keep Django's pages.
API_ERROR_RESPONSES = {
    "/v1/": "openai_api.errors.error_response",
    "/api/": "llmproject.exception_handler.error_response",
}
# Largest request body (Django's setting, default 2.5 MB): the ASGI handlers
# stop reading past it and answer 413, chunked bodies included (Django itself
# would spool any size to a temporary file first).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)
# PostgreSQL through a backend whose connection pool fails fast while the
# server is unreachable (llmproject/postgresql/base.py): a 503 at once, not a
# 500 after DB_POOL_TIMEOUT. A connect that gets no answer gives up after
# DB_CONNECT_TIMEOUT seconds (libpq waits for ever, the pool's threads with it).
if DATABASES["default"]["ENGINE"].endswith(".backends.postgresql"):  # django-prometheus's included
    DATABASES["default"]["ENGINE"] = "llmproject.postgresql"
    DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5))
# The circuit breaker of each model (inference.breaker): this many engine
# failures in a row open it (503 with Retry-After at once, or the registry's
# "fallback" model takes the requests; 0: no breaker), and it lets one trial
# request through after LLM_BREAKER_RESET seconds.
LLM_BREAKER_FAILURES = env.int("LLM_BREAKER_FAILURES", default=5)
LLM_BREAKER_RESET = env.float("LLM_BREAKER_RESET", default=30)
# Per-user budgets on the REST API (DRF throttles, counted in CACHES: one count
# across every web process): e.g. API_THROTTLE_CLASSES=
# rest_framework.throttling.UserRateThrottle,llmproject.throttling.TokenRateThrottle
# with API_THROTTLE_RATES=user=60/min,tokens=100000/hour. None by default; the
# OpenAI API has its own list (OPENAI_API_THROTTLE_CLASSES) on the same rates.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = env.list("API_THROTTLE_CLASSES", default=[])
# DRF's parsers, with a JSON parser that refuses JSON nested past Python's
# recursion limit with a 400 (DRF's lets the RecursionError through: a 500).
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = [
    "llmproject.parsers.JSONParser",
    "rest_framework.parsers.FormParser",
    "rest_framework.parsers.MultiPartParser",
]

# --- Logging ----------------------------------------------------------------
# LOG_FORMAT=json: one JSON object per line (python-json-logger), for a log
# collector; the default stays human-readable. Both carry the request's
# correlation id (llmproject.logcontext), so one id finds a request's lines in
# the web server's and the workers' logs, and its events in the event log.
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "llmproject.logcontext.ContextFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s %(job_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Operations: metrics, health ----------------------------------------------
# /metrics (the web process) and each worker's metrics port answer a client
# whose address is in METRICS_ALLOWED_IPS (networks; default: this host only)
# or that sends "Authorization: Bearer $METRICS_TOKEN" (unset: no token works).
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.0/8", "::1/128"])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# Each model worker serves its own metrics (the worker process's, its engine's,
# vLLM's own) on a port: LLM_WORKER_METRICS_PORT + its index in run_workers'
# list, or any free port when 0 (the default). Prometheus finds them all through
# the web process (/metrics/targets, HTTP service discovery): each worker
# registers "<advertised host>:<port>" with its heartbeat. "off": no port.
LLM_WORKER_METRICS_PORT = env.str("LLM_WORKER_METRICS_PORT", default="0")
LLM_WORKER_METRICS_ADDR = env.str("LLM_WORKER_METRICS_ADDR", default="127.0.0.1")
# The host Prometheus reaches a worker at (default: the bind address, or this
# host's name when it binds every interface).
LLM_WORKER_METRICS_HOST = env.str("LLM_WORKER_METRICS_HOST", default="")
# Read when Prometheus scrapes /metrics (dotted paths): queue depth and live
# workers per model, from Redis. Other apps add theirs here.
METRICS_COLLECTORS = ["conversations.queue_metrics.QueueCollector", "inference.breaker.BreakerCollector"]
# The workers' metrics addresses, for /metrics/targets.
METRICS_TARGETS = "inference.liveness.metrics_targets"
# /readyz: name -> async check (dotted path) returning {"ok": bool, ...}.
HEALTH_CHECKS = {
    "database": "llmproject.health.database_check",
    "redis": "llmproject.health.redis_check",
    "workers": "inference.liveness.workers_check",
    "breakers": "inference.breaker.breakers_check",
}
# Seconds each readiness check may take before it counts as down.
HEALTH_CHECK_TIMEOUT = env.float("HEALTH_CHECK_TIMEOUT", default=2.0)
