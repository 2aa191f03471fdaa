from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from conversations.authentication import api_key_create, api_key_user


class Command(BaseCommand):
    help = (
        "Create (once) a demo superuser with a password and an API key for `make run`, "
        "and print them as JSON. Kept in var/demo.json so later runs print the same ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument("--file", default=str(Path(settings.VAR_DIR) / "demo.json"))

    def handle(self, *args: Any, username: str, file: str, **options: Any) -> None:
        path = Path(file)
        saved = json.loads(path.read_text()) if path.exists() else {}
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None or saved.get("username") != username:
            password = secrets.token_urlsafe(12)
            if user is None:
                user = user_model.objects.create_superuser(username=username, password=password)
            else:
                user.set_password(password)
                user.save()
            saved = {"username": username, "password": password}
        if not saved.get("api_key") or api_key_user(raw=saved["api_key"]) != user:
            _, saved["api_key"] = api_key_create(user=user, name="make run")
        path.write_text(json.dumps(saved))
        path.chmod(0o600)
        self.stdout.write(json.dumps(saved))
