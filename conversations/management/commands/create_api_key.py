from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from conversations.authentication import api_key_create


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user if needed) and print it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="a label for the key")
        parser.add_argument("--password", help="set this password on a user created here")

    def handle(self, *args: Any, username: str, name: str, password: str | None, **options: Any) -> None:
        user_model = get_user_model()
        user, created = user_model.objects.get_or_create(username=username)
        if created:
            if password:
                user.set_password(password)
            else:
                user.set_unusable_password()
            user.save()
            self.stderr.write(f"created user {username!r}")
        _, raw = api_key_create(user=user, name=name)
        self.stdout.write(raw)
