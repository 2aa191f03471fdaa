"""Print the project's Prometheus config (``deploy/prometheus/prometheus.yml``) for another
place than docker-compose: the web process's address, the token file (or none), the
scrape interval.

    python manage.py prometheus_config --web 127.0.0.1:8000 > var/prometheus.yml
    prometheus --config.file=var/prometheus.yml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

SOURCE = Path(settings.BASE_DIR) / "deploy" / "prometheus" / "prometheus.yml"
COMPOSE_WEB = "web:8000"


def prometheus_config(*, web: str, token_file: str | None, interval: str | None = None) -> dict[str, Any]:
    """The deploy config with ``web`` for the web process, ``token_file`` for the bearer
    token (None: no token sent), and without jobs of compose's own services (Flower)."""
    config = yaml.safe_load(SOURCE.read_text())
    if interval:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    jobs = []
    for job in config["scrape_configs"]:
        if not job["job_name"].startswith("llmserve-"):
            continue
        blocks = [job, *job.get("http_sd_configs", [])]
        for block in blocks:
            if token_file is None:
                block.pop("authorization", None)
            elif "authorization" in block:
                block["authorization"]["credentials_file"] = token_file
        for static in job.get("static_configs", []):
            static["targets"] = [web if t == COMPOSE_WEB else t for t in static["targets"]]
        for sd in job.get("http_sd_configs", []):
            sd["url"] = sd["url"].replace(f"//{COMPOSE_WEB}/", f"//{web}/")
            if interval:
                sd["refresh_interval"] = interval
        jobs.append(job)
    config["scrape_configs"] = jobs
    return config


class Command(BaseCommand):
    help = "Print the Prometheus config of deploy/ for a web process at another address (make run)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--web", default="127.0.0.1:8000", help="the web process's host:port")
        parser.add_argument("--token-file", help="a file holding METRICS_TOKEN (default: send none)")
        parser.add_argument("--scrape-interval", help="e.g. 5s (default: the file's, 15s)")

    def handle(
        self, *args: Any, web: str, token_file: str | None, scrape_interval: str | None, **kw: Any
    ) -> None:
        config = prometheus_config(web=web, token_file=token_file, interval=scrape_interval)
        self.stdout.write(yaml.safe_dump(config, sort_keys=False))
