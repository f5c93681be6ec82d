"""Start the MLflow UI on CLaaS's own tracking store and artifacts."""
from __future__ import annotations

import os
import sys

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Start the MLflow UI on the same store CLaaS writes to (default http://127.0.0.1:5000)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=5000)

    def handle(self, *args, host: str, port: int, **options) -> None:
        uri = settings.MLFLOW_TRACKING_URI
        if uri.startswith("http"):
            self.stderr.write(f"MLflow runs as a server at {uri}; open it there.")
            sys.exit(1)
        argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                "--default-artifact-root", settings.MLFLOW_ARTIFACT_ROOT, "--host", host, "--port", str(port)]
        self.stdout.write(f"MLflow UI on http://{host}:{port} (store {uri})")
        os.execv(sys.executable, argv)
