"""docker-compose.yml, the Dockerfile and deploy/, checked without a Docker engine (none
runs here): the files parse, name what the README lists, keep secrets out, and give
vLLM what it needs; Prometheus's own ``promtool`` checks the scrape config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# What compose needs from the environment, with no default.
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "METRICS_TOKEN", "FLOWER_BASIC_AUTH", "GRAFANA_ADMIN_PASSWORD")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<) resolved


def readme_services() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M))


def test_compose_runs_every_service_the_readme_lists_and_no_other(compose):
    assert set(compose["services"]) == readme_services()


def test_no_secret_has_a_default_and_none_enters_the_image(compose):
    text = COMPOSE.read_text()
    assert "change-me" not in text.lower()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, name
        assert all(use.startswith(":?") for use in uses), f"{name} must be required, not defaulted: {uses}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", "var/", ".env"} <= set(ignored)
    # The generator writes each of them.
    generator = (ROOT / "scripts" / "compose-env.sh").read_text()
    assert all(f"add {name} " in generator for name in re.findall(r"\$\{([A-Z_]+):\?", text))


def test_vllm_gets_a_compiler_libnuma_and_shared_memory(compose):
    dockerfile = (ROOT / "Dockerfile").read_text()
    installed = re.search(r"apt-get install -y --no-install-recommends ([^\n\\&]+)", dockerfile)
    assert installed and {"gcc", "g++", "libc6-dev", "libnuma1"} <= set(installed.group(1).split())
    registry = json.loads((ROOT / "deploy" / "models.json").read_text())
    workers = {n: s for n, s in compose["services"].items() if "run_workers" in s.get("command", [])}
    assert workers
    for name, service in workers.items():
        model = service["command"][service["command"].index("run_workers") + 1]
        assert model in registry, name
        if registry[model]["engine"] == "vllm":
            assert service.get("ipc") == "host" or "shm_size" in service, name
        env = service["environment"]
        assert env["LLM_WORKER_METRICS_HOST"] == name  # Prometheus reaches it by its service name
        assert env["LLM_WORKER_METRICS_ADDR"] == "0.0.0.0"


def test_flower_is_only_reached_through_its_proxy_and_prometheus_through_loopback(compose):
    services = compose["services"]
    assert "ports" not in services["flower"]
    assert "--basic-auth" in " ".join(services["flower"]["command"])
    proxy = (ROOT / "deploy" / "flower" / "nginx.conf").read_text()
    assert "location = /metrics { return 404; }" in proxy
    assert all(p.startswith("127.0.0.1:") for p in services["prometheus"]["ports"])
    assert compose["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert services["prometheus"]["secrets"] == ["metrics_token"]


def test_compose_probes_health_and_readiness(compose):
    web = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    assert "/readyz" in web
    for name, service in compose["services"].items():
        if name.startswith("worker-"):
            assert "/metrics" in " ".join(service["healthcheck"]["test"]), name


def test_grafana_is_provisioned_with_the_dashboard(compose):
    mounts = compose["services"]["grafana"]["volumes"]
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/llmserve.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/llmserve.json").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}


def test_promtool_accepts_the_scrape_config(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make test` installs Debian's prometheus")
    token = tmp_path / "metrics_token"
    token.write_text("x")
    config = tmp_path / "prometheus.yml"
    source = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    config.write_text(source.replace("/run/secrets/metrics_token", str(token)))
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_docker_compose_config_accepts_the_file_where_compose_is_installed(tmp_path):
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("the docker compose plugin is not installed here")
    env = tmp_path / ".env"
    env.write_text("\n".join(f"{name}=x" for name in SECRETS))
    check = subprocess.run(
        [docker, "compose", "--env-file", str(env), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
