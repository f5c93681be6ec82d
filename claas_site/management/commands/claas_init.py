"""Prepare the data dir beyond Django's migrations: the MLflow store's schema."""
from __future__ import annotations

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the MLflow tracking store's tables so the first request does not pay for it."

    def handle(self, *args, **options) -> None:
        from claas_site import tracking

        tracking.store_init()
