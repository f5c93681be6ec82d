"""What every benchmark shares: a scratch folder, progress lines, the live service, Django in-process."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The worker and the web process run with the production defaults, not the test harness's fast timers.
SERVICE_ENV = {
    "CLAAS_JOB_HEARTBEAT_S": "5",
    "CLAAS_JOB_STALE_AFTER_S": "30",
    "CLAAS_JOB_REAPER_INTERVAL_S": "10",
    "CLAAS_LOG_LEVEL": "WARNING",
}
SERVICE_USER = "bench"


class Context:
    """One run of the benchmarks: options, the scratch folder, the live service (started once)."""

    def __init__(self, *, workdir: Path, quick: bool) -> None:
        self.workdir = workdir
        self.quick = quick
        self.started = time.perf_counter()
        self._service: Any = None
        self._client: Any = None
        self.service_start: dict[str, Any] | None = None
        self.current = ""
        self.shared: dict[str, Any] = {}  # what one benchmark leaves for another (a deployment, figures)

    # --- progress ----------------------------------------------------------------------------
    def say(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[{elapsed:6.1f} s] {self.current}{message}", flush=True)

    # --- the live service --------------------------------------------------------------------
    def service(self) -> Any:
        """The web process + one `run_huey` worker in their own data dir; the web start-up is timed."""
        if self._service is None:
            from tests.service import LiveService

            self.say("starting the service (migrate, web process, one worker)")
            live = LiveService(self.workdir / "service", env=SERVICE_ENV)
            live.data_dir.mkdir(parents=True, exist_ok=True)
            live.manage("migrate", "--noinput", "-v", "0")
            self.service_start = web_start_timed(live)
            live.start_worker()
            self._service = live
            self._client = live.user(SERVICE_USER)
            self.say(f"service up on {live.base_url}: first /healthz 200 after "
                     f"{self.service_start['to_healthy_s']:.2f} s")
        return self._service

    def client(self) -> Any:
        self.service()
        return self._client

    def stop(self) -> None:
        if self._service is not None:
            self._service.stop()
            self._service = None

    # --- Django in this process (benchmarks 1 and 3 call the modules directly) -----------------
    def django(self) -> None:
        if "DJANGO_SETTINGS_MODULE" not in os.environ or not _django_ready():
            data_dir = self.workdir / "inprocess"
            data_dir.mkdir(parents=True, exist_ok=True)
            os.environ["CLAAS_DATA_DIR"] = str(data_dir)
            os.environ["DJANGO_SETTINGS_MODULE"] = "claas_site.settings"
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            import django
            from django.core.management import call_command

            django.setup()
            call_command("migrate", "--noinput", verbosity=0)


def _django_ready() -> bool:
    try:
        from django.apps import apps

        return apps.ready
    except Exception:
        return False


def web_start_timed(live: Any, poll_s: float = 0.02) -> dict[str, Any]:
    """Spawn the web process (uvicorn, as `./claas run` starts one) and time it to the first 200 from /healthz (polled every `poll_s`)."""
    import requests

    from tests.service import web_command

    started = time.perf_counter()
    live.web = live._spawn("web", web_command(live.port))
    deadline = started + 120
    while time.perf_counter() < deadline:
        if live.web.poll() is not None:
            raise RuntimeError("the web process exited:\n" + live.logs[-1].read_text()[-3000:])
        try:
            if requests.get(live.base_url + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(poll_s)
    else:
        raise RuntimeError("the web process did not answer /healthz within 120 s")
    return {"to_healthy_s": time.perf_counter() - started, "rss_mb": rss_mb(live.web.pid)}


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (one web process; children count if any)."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 1024 / 1024


def uss_mb(pid: int) -> float:
    """Memory private to a process (USS): what it would give back on exit; shared library pages excluded."""
    import psutil

    return psutil.Process(pid).memory_full_info().uss / 1024 / 1024


def run_json(module: str, args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m <module> <args>` in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run([PYTHON, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{module} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{module} printed no JSON result:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank: the value a q-share of the samples do not exceed."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]
