from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from conversations.reconciler.loop import Reconciler


class Command(BaseCommand):
    help = (
        "Recover stuck jobs: take back those whose worker died, publish again those whose "
        "message was lost, finish orphaned cancels, store stashed answers, send missing final "
        "events. One per deployment (two are safe)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval", type=float, help="seconds between passes (default: LLM_RECONCILE_INTERVAL)"
        )
        parser.add_argument("--once", action="store_true", help="run one pass and exit")

    def handle(self, *args: Any, interval: float | None, once: bool, **options: Any) -> None:
        reconciler = Reconciler()
        try:
            if once:
                reconciler.run_pass()
                return
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: stop.set())
            reconciler.run(interval=interval or settings.LLM_RECONCILE_INTERVAL, stop=stop)
        finally:
            reconciler.close()
