"""The foundation: health, authentication, the error format, API docs, settings, start-up."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parents[2]


def test_healthz_checks_database_queue_and_mlflow(service):
    body = service.anonymous().get("/healthz").json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True, "queue": True, "mlflow": True}
    assert body["mode"] == "embedded"


def test_healthz_reports_a_broken_store_with_503(tmp_path):
    (tmp_path / "not-a-dir").write_text("a file where the store's folder should be")
    env = {**os.environ, "CLAAS_DATA_DIR": str(tmp_path),
           "CLAAS_ALLOWED_HOSTS": "testserver",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/not-a-dir/mlflow.db"}
    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='claas_site.settings'; django.setup();"
            "from django.test import Client; from django.core.management import call_command;"
            "call_command('migrate', verbosity=0); r = Client().get('/healthz');"
            "print(r.status_code, r.json()['checks']['mlflow']['ok'], r.json()['checks']['database']['ok'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split()[-3:] == ["503", "False", "True"], out.stderr[-2000:]


@pytest.mark.django_db
def test_unauthenticated_requests_get_401_in_the_error_format():
    response = APIClient().get("/api/experiments/")
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication credentials were not provided.", "details": {}}


@pytest.mark.django_db
def test_a_bad_token_is_refused():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get("/api/experiments/")
    assert response.status_code == 401
    assert response.json()["error"] == "The token or session is not valid."


def test_token_authentication_works_against_the_live_service(service):
    dave = service.user("dave")
    assert dave.get("/api/experiments/").status_code == 200
    assert dave.get("/api/strategies/").status_code == 200


def test_openapi_schema_and_swagger_ui(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/base-scenario/setup/" in paths
    assert "/base-scenario/{username}/exec/{exp_name}" in paths
    docs = api.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_the_api_docs_page_loads_nothing_from_another_host(api, client):
    import re

    html = api.get("/api/docs/").content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r'(?:src|href)=\'([^\']+)\'', html)
    assert urls and not [u for u in urls if re.match(r"(https?:)?//", u)], urls
    scripts = [u for u in urls if u.endswith(".js")]
    assert any("swagger-ui-bundle" in u for u in scripts)
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_unknown_api_path_is_a_json_404(api):
    response = api.get("/api/experiments/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "You have no experiment named 'nope'."


def test_check_deploy_passes_with_production_settings(tmp_path):
    env = {**os.environ, "CLAAS_DATA_DIR": str(tmp_path), "CLAAS_SECURE": "1",
           "CLAAS_SECRET_KEY": secrets.token_urlsafe(64), "CLAAS_ALLOWED_HOSTS": "claas.example.com"}
    out = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout


def test_secret_key_is_generated_once_into_the_data_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CLAAS_SECRET_KEY"}
    env["CLAAS_DATA_DIR"] = str(tmp_path)
    code = "import os; os.environ['DJANGO_SETTINGS_MODULE']='claas_site.settings'; from django.conf import settings; print(settings.SECRET_KEY)"
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    second = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    assert first == second and len(first.strip()) > 50
    assert (tmp_path / "secret_key").read_text().strip() == first.strip()
    assert oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"


def test_debug_is_off_unless_asked():
    assert settings.DEBUG is (os.environ.get("CLAAS_DEBUG") == "1")


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(db):
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.fail("the embedded default must use SQLite")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
    assert settings.DATABASES["default"]["OPTIONS"]["timeout"] >= 5


def test_the_web_process_does_not_import_avalanche_or_alibi(tmp_path):
    """Start-up stays fast: the training and drift libraries load in the worker only."""
    code = (
        "import os, sys; os.environ['DJANGO_SETTINGS_MODULE']='claas_site.settings';"
        "from claas_site.asgi import application;"
        "from django.urls import get_resolver; get_resolver().resolve('/api/strategies/');"
        "import claas_site.urls;"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('avalanche', 'alibi_detect'))}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "CLAAS_DATA_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


def test_bootstrap_demo_prints_a_working_login_and_token(service):
    out = service.manage("bootstrap_demo")
    token = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("token:"))
    password = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("password:"))
    from tests.service import Client

    assert Client(service.base_url, token).get("/api/experiments/").status_code == 200
    session = Client(service.base_url, None).session
    page = session.get(service.base_url + "/accounts/login/")
    csrf = session.cookies["csrftoken"]
    login = session.post(service.base_url + "/accounts/login/",
                         data={"username": "demo", "password": password, "csrfmiddlewaretoken": csrf},
                         headers={"Referer": service.base_url + "/accounts/login/"}, allow_redirects=False)
    assert page.status_code == 200 and login.status_code == 302


def _thread_stats(pid: int, field: int) -> list[int]:
    """One numeric field of /proc/<pid>/task/*/stat for every thread (fields counted from 3, after the name)."""
    values = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read (a pool thread retiring)
        values.append(int(stat.rsplit(")", 1)[1].split()[field - 3]))
    assert values, f"no threads listed for process {pid}"
    return values


NICE = 19


def _slices_ns(pid: int) -> list[int]:
    """The EEVDF time slice (sched_attr.sched_runtime) of every thread, read with sched_getattr(2)."""
    import ctypes
    import platform
    import struct

    number = {"x86_64": 315, "aarch64": 275}[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        buffer = ctypes.create_string_buffer(56)
        if libc.syscall(number, int(task.name), buffer, 56, 0) == 0:
            out.append(struct.unpack("IIQiIQQQII", buffer.raw)[5])
    return out


def test_workers_run_below_the_web_process_priority(service):
    """Serving answers first on a shared machine: every worker thread has nice 10 and a long time slice
    (a waking web thread, whose slice is shorter, preempts training at once); the web process has neither."""
    from clserver.jobs.tasks import WORKER_SLICE_NS

    worker = service.workers[0]
    deadline = time.time() + 60
    while time.time() < deadline and min(_thread_stats(worker.pid, NICE)) < 10:
        time.sleep(0.5)
    assert min(_thread_stats(worker.pid, NICE)) >= 10
    assert max(_thread_stats(service.web.pid, NICE)) < min(_thread_stats(worker.pid, NICE))
    assert set(_slices_ns(worker.pid)) == {WORKER_SLICE_NS}
    assert max(_slices_ns(service.web.pid)) < WORKER_SLICE_NS


def _cores() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("configured, redis, omp, expected", [
    (0, "", "", "cores-1"),         # embedded: a core stays with the web process
    (3, "", "", 3),                 # an explicit CLAAS_TORCH_THREADS wins
    (0, "redis://127.0.0.1", "", None),  # scaled: workers have their machines, torch decides
    (0, "", "2", None),             # OMP_NUM_THREADS set: torch reads it
])
def test_worker_torch_threads_leave_a_core_to_serving_in_the_embedded_mode(settings, monkeypatch, configured,
                                                                          redis, omp, expected):
    from clserver.jobs.queues import worker_torch_threads

    settings.TORCH_THREADS, settings.REDIS_URL = configured, redis
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    if expected == "cores-1":
        expected = max(1, _cores() - 1)
    assert worker_torch_threads() == expected
