"""The Docker Compose files of the scaled mode: each GPU worker on its own GPU, a web healthcheck, and
static files collected before the web process starts."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import yaml

from tests.service import ROOT

DEPLOY = ROOT / "deploy"


def compose_gpu_module():
    spec = importlib.util.spec_from_file_location("compose_gpu", DEPLOY / "compose_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_gpu_worker_is_pinned_to_its_own_gpu():
    written = yaml.safe_load(compose_gpu_module().compose_gpu(3))
    workers = {name: s for name, s in written["services"].items() if name.startswith("worker-gpu-")}
    devices = [s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for s in workers.values()]
    assert devices == [["0"], ["1"], ["2"]]
    assert all(s["environment"]["CLAAS_WORKER_DEVICE"] == "cuda" for s in workers.values())
    assert all(s["deploy"]["replicas"] == 1 for s in workers.values())
    assert written["services"]["worker-train"]["deploy"]["replicas"] == 0  # no CPU trainer beside them


def test_the_committed_gpu_file_is_the_generators_output():
    assert (DEPLOY / "compose.gpu.yaml").read_text() == compose_gpu_module().compose_gpu(2)


def test_the_web_container_has_a_healthcheck_on_healthz_and_static_files_are_collected():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert "/healthz" in " ".join(services["web"]["healthcheck"]["test"])
    assert "collectstatic --noinput" in " ".join(services["migrate"]["command"])


def test_collectstatic_gathers_the_gui_and_the_api_docs(tmp_path):
    env = {**os.environ, "CLAAS_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    static = tmp_path / "static"
    assert (static / "frontend" / "claas.js").is_file()
    assert list(static.rglob("swagger-ui-bundle.js"))
