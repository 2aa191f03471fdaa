"""``python manage.py create_tiny_model [--path P] [--force] [--seed N]``.

Writes the tiny random-weight Llama checkpoint of ``inference.tiny_model``
(for running the real vLLM engine offline, in CI and on CPU) and prints its
path. Default path: ``settings.LLM_TINY_MODEL_PATH`` if set, else
``<BASE_DIR>/var/models/tiny``. An existing checkpoint is kept unless
``--force``. Needs torch, transformers and tokenizers (requirements-cpu.txt).
"""

from __future__ import annotations

import shutil
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


def default_path() -> Path:
    configured = getattr(settings, "LLM_TINY_MODEL_PATH", None)
    if configured:
        return Path(configured)
    return Path(getattr(settings, "BASE_DIR", Path.cwd())) / "var" / "models" / "tiny"


class Command(BaseCommand):
    help = "Create the tiny local Llama checkpoint used to run vLLM offline."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--path", type=Path, default=None, help="target folder")
        parser.add_argument("--force", action="store_true", help="replace an existing one")
        parser.add_argument("--seed", type=int, default=0, help="tokenizer corpus and weights")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"] or default_path()).expanduser().resolve()
        if path.exists():
            is_checkpoint = (path / "config.json").is_file()
            if is_checkpoint and not options["force"]:
                self.stderr.write(f"exists, kept (use --force to rebuild): {path}")
                self.stdout.write(str(path))
                return
            if not is_checkpoint and (not path.is_dir() or any(path.iterdir())):
                # Never delete something that is not a model folder.
                raise CommandError(f"{path} exists and is not a model checkpoint")
            shutil.rmtree(path)
        try:
            # Imported here: torch and transformers are worker-only dependencies.
            from inference.tiny_model import create_tiny_checkpoint

            create_tiny_checkpoint(path, seed=options["seed"])
        except ImportError as exc:
            raise CommandError(
                f"{exc}: install the engine requirements (pip install -r requirements-cpu.txt)"
            ) from exc
        self.stdout.write(str(path))
