"""/healthz: the database, the job queue and the MLflow store each answer, or 503."""
from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_queue() -> None:
    from huey.contrib.djhuey import HUEY

    HUEY.pending_count()


def _check_mlflow() -> None:
    from claas_site import tracking

    tracking.ping()


CHECKS = {"database": _check_database, "queue": _check_queue, "mlflow": _check_mlflow}


def healthz(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict] = {}
    healthy = True
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
            results[name] = {"ok": True}
        except Exception as exc:  # a health check reports failures, it never raises
            healthy = False
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    body = {"status": "ok" if healthy else "unavailable", "checks": results,
            "mode": "scaled" if settings.REDIS_URL else "embedded"}
    return JsonResponse(body, status=200 if healthy else 503)
