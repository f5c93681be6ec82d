"""Create a user (or reset its password) and print its login and API token as JSON."""
from __future__ import annotations

import json
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create a user with an API token; prints {username, password, token} as JSON."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--password", default=None)

    def handle(self, *args, username: str, password: str | None, **options) -> None:
        password = password or secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(json.dumps({"username": username, "password": password, "token": token.key}))
