"""A live CLaaS for tests: the web process (uvicorn, as `./claas run` starts it) and real `run_huey` workers
in their own processes.

Tests drive it over HTTP like a user would; workers can be killed and restarted.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
START_TIMEOUT_S = 90


def web_command(port: int, processes: int = 1) -> list[str]:
    """The web server as `./claas run` starts it (claas_site/web.py); one process execs uvicorn in place."""
    return [PYTHON, "-m", "claas_site.web", "-b", "127.0.0.1", "-p", str(port), "--processes", str(processes)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """requests.Session bound to the service with a user's token."""

    def __init__(self, base_url: str, token: str | None, username: str = "") -> None:
        self.base_url = base_url
        self.username = username
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.base_url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def wait_status(self, exp_name: str, statuses: tuple[str, ...] = ("completed", "failed", "cancelled"),
                    timeout: float = 300) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            body = self.get(f"/base-scenario/{self.username}/status/{exp_name}").json()
            if body["status"] in statuses:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{exp_name} did not reach {statuses} in {timeout} s (last: {body})")


# Variables that pick a store or a server: a live service gets them only from its `env`, never
# from this process (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to os.environ, so an
# in-process test would otherwise point every later service at its own MLflow store).
NOT_INHERITED = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABASE_URL", "CLAAS_REDIS_URL",
                 "CLAAS_DATA_DIR")


def inherited_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}


class LiveService:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, workers: int = 1,
                 worker_args: tuple[str, ...] = ("run_huey",)) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **inherited_environment(),
            "CLAAS_DATA_DIR": str(data_dir),
            "CLAAS_JOB_HEARTBEAT_S": "1",
            "CLAAS_JOB_STALE_AFTER_S": "10",
            "CLAAS_JOB_REAPER_INTERVAL_S": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.n_workers = workers
        self.worker_args = worker_args  # the manage.py command line of a worker
        self.logs: list[Path] = []

    # --- processes ---------------------------------------------------------------------------
    def manage(self, *args: str, timeout: float = 120) -> str:
        out = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.data_dir / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        handle = open(log, "w")
        return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start(self) -> "LiveService":
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("claas_init")
        self.start_web()
        for _ in range(self.n_workers):
            self.start_worker()
        return self

    def start_web(self) -> None:
        self.web = self._spawn("web", web_command(self.port))
        self.wait_healthy()

    def stop_web(self) -> None:
        if self.web and self.web.poll() is None:
            self.web.terminate()
            self.web.wait(timeout=20)

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.web and self.web.poll() is not None:
                raise RuntimeError("the web process exited:\n" + self.logs[-1].read_text()[-3000:])
            try:
                if requests.get(self.base_url + "/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the web process did not become healthy")

    def start_worker(self, extra_env: dict[str, str] | None = None,
                     args: tuple[str, ...] | None = None) -> subprocess.Popen:
        env_backup = self.env
        if extra_env:
            self.env = {**self.env, **extra_env}
        try:
            proc = self._spawn("worker", [PYTHON, "manage.py", *(args or self.worker_args)])
        finally:
            self.env = env_backup
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen | None = None) -> None:
        """SIGKILL: the worker gets no chance to clean up, as in a machine failure."""
        proc = proc or self.workers[0]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        self.workers.remove(proc)

    def stop(self) -> None:
        for proc in [*self.workers, self.web]:
            if proc and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in [*self.workers, self.web]:
            if proc:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.workers = []

    # --- users ---------------------------------------------------------------------------------
    def user(self, username: str) -> Client:
        info = json.loads(self.manage("claas_user", username).strip().splitlines()[-1])
        client = Client(self.base_url, info["token"], username)
        client.password = info["password"]  # type: ignore[attr-defined]
        return client

    def anonymous(self) -> Client:
        return Client(self.base_url, None)
