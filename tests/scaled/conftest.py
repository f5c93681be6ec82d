"""The scaled mode for tests: a fresh PostgreSQL database, a Redis db of its own, separate workers.

PostgreSQL and Redis are the servers on 127.0.0.1 (`.ci/run` starts them when they are not
running); CLAAS_TEST_POSTGRES_URL and CLAAS_TEST_REDIS_URL point elsewhere.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
import redis
import requests

from tests.service import LiveService, free_port

# The admin connection creates and drops the test database; nothing else touches it.
POSTGRES_ADMIN_URL = os.environ.get("CLAAS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Redis db 13 is this suite's: flushed at start and end, never a developer's db 0.
REDIS_URL = os.environ.get("CLAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def _database_url(name: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@dataclass
class Scaled:
    """Handles on a live scaled CLaaS: the service, its database and its Redis."""

    service: LiveService
    database_url: str
    redis_url: str
    huey_name: str
    mlflow_url: str

    def row(self, *, username: str, exp_name: str) -> dict[str, Any]:
        """The experiment row as the workers left it (worker, attempts, owner), read from PostgreSQL."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cur = conn.execute(
                "SELECT e.id, e.owner_id, e.status, e.worker, e.attempts FROM clserver_experiment e "
                "JOIN auth_user u ON u.id = e.owner_id WHERE u.username = %s AND e.name = %s",
                (username, exp_name))
            values = cur.fetchone()
            assert values is not None, f"no experiment {username}/{exp_name}"
            return dict(zip(["id", "owner_id", "status", "worker", "attempts"], values))

    def worker_logs(self) -> str:
        return "\n".join(log.read_text() for log in self.service.logs if log.name.startswith("worker"))


def mlflow_server(*, database_url: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` as README's "Scaling out" runs it: PostgreSQL backend store, served artifacts."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    store = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"mlflow server did not answer in 120 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaled]:
    """Web + two `run_worker --queue train` processes on PostgreSQL and Redis, each worker CPU-only, tracking
    to a real `mlflow server` (its own PostgreSQL database).

    One stack for the whole session, shared by the scaled modules: each test uses users and names of its own,
    and pytest-django runs the transactional websocket test apart from the others, so a module-scoped stack
    was started three times. A test that needs both train workers asks for `two_train_workers`."""
    name = f"claas_test_{uuid.uuid4().hex[:10]}"
    huey_name = f"claastest{uuid.uuid4().hex[:6]}"
    cache = redis.Redis.from_url(REDIS_URL)
    cache.flushdb()
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'CREATE DATABASE "{name}_mlflow"')
    database_url = _database_url(name)
    data_dir: Path = tmp_path_factory.mktemp("scaled")
    tracker, mlflow_url = mlflow_server(database_url=_database_url(f"{name}_mlflow"),
                                        artifacts=data_dir / "mlflow-server-artifacts", log=data_dir / "mlflow.log")
    live = LiveService(data_dir, workers=2, worker_args=("run_worker", "--queue", "train"), env={
        "DATABASE_URL": database_url,
        "CLAAS_REDIS_URL": REDIS_URL,
        "CLAAS_HUEY_NAME": huey_name,
        "CLAAS_JOB_STALE_AFTER_S": "5",
        "CLAAS_WORKER_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": mlflow_url,
    })
    try:
        live.start()
        yield Scaled(service=live, database_url=database_url, redis_url=REDIS_URL, huey_name=huey_name,
                     mlflow_url=mlflow_url)
    finally:
        # The tracker stops alongside the service rather than after it; it is test scaffolding, so it is
        # killed if it has not stopped by then (its store is dropped with the database below).
        os.killpg(tracker.pid, signal.SIGTERM)
        live.stop()
        try:
            tracker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(tracker.pid, signal.SIGKILL)
            tracker.wait(timeout=30)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}_mlflow" WITH (FORCE)')
        cache.flushdb()
        cache.close()


@pytest.fixture
def two_train_workers(scaled: Scaled) -> Scaled:
    """The shared stack with both of its train workers (a test before may have killed one)."""
    while len(scaled.service.workers) < 2:
        scaled.service.start_worker()
    return scaled
