"""Create (or refresh) the demo user and print its login and API token."""
from __future__ import annotations

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the demo user (login demo) and print its password and API token."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default=os.environ.get("CLAAS_DEMO_USER", "demo"))

    def handle(self, *args, username: str, **options) -> None:
        password_file = settings.DATA_DIR / "demo_password"
        password = os.environ.get("CLAAS_DEMO_PASSWORD") or (
            password_file.read_text().strip() if password_file.exists() else secrets.token_urlsafe(9)
        )
        password_file.write_text(password)
        password_file.chmod(0o600)
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.set_password(password)
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        # Where `./claas run` listens (CLAAS_HOST, CLAAS_PORT).
        base_url = f"http://{os.environ.get('CLAAS_HOST', '127.0.0.1')}:{os.environ.get('CLAAS_PORT', '8000')}"
        self.stdout.write(
            "\n".join([
                "",
                "  CLaaS demo user",
                f"    login:    {username}",
                f"    password: {password}",
                f"    token:    {token.key}",
                "",
                f"    try:  curl -H 'Authorization: Token {token.key}' {base_url}/api/strategies/",
                "",
            ])
        )
