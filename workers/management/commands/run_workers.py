from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.launcher import run, worker_specs


class Command(BaseCommand):
    help = "Start one Celery worker per (model, GPU group) from the model registry."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("models", nargs="*", help="models to serve (default: all in the registry)")
        parser.add_argument(
            "--group", type=int, help="start only this GPU group (index in the model's gpus list)"
        )
        parser.add_argument("--list", action="store_true", help="print the worker commands and exit")
        parser.add_argument("--loglevel", default="info")
        parser.add_argument(
            "--stop-timeout",
            type=float,
            help="seconds to wait for workers on shutdown before killing them "
            "(default: LLM_SHUTDOWN_GRACE + 30)",
        )

    def handle(
        self,
        *args: Any,
        models: list[str],
        group: int | None,
        list: bool,
        loglevel: str,
        stop_timeout: float | None,
        **options: Any,
    ) -> None:
        try:
            specs = worker_specs(models)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if group is not None:
            specs = [s for s in specs if s.index == group]
            if not specs:
                raise CommandError(f"no GPU group {group} in the selected models")
        if list:
            for spec in specs:
                gpus = ",".join(map(str, spec.gpus or ())) or "none"
                self.stdout.write(
                    f"{spec.name}  queue={spec.model.queue}  gpus={gpus}  concurrency={spec.concurrency}"
                )
                self.stdout.write("  " + " ".join(spec.command(loglevel=loglevel)))
            return
        if stop_timeout is None:
            stop_timeout = settings.LLM_SHUTDOWN_GRACE + 30
        status = run(specs, loglevel=loglevel, stop_timeout=stop_timeout)
        sys.exit(status)
