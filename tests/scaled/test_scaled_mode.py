"""The scaled mode end to end: PostgreSQL, RedisHuey queues, channels_redis and separate workers."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from tests.websocket import WebsocketCommunicator

from claas_site.settings import redis_channel_layer
from clserver.experiments.events import experiment_group
from tests.scaled.conftest import Scaled
from tests.service import ROOT

OPTIONS = {"model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
           "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
           "training": {"epochs": 4, "train_mb_size": 32, "eval_mb_size": 256,
                        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "device": "cpu", "seed": 0}}
REPLAY = {"name": "replay", "params": {"mem_size": 200}}


@pytest.fixture(scope="session")
def dana(scaled: Scaled):
    return scaled.service.user("dana")


def create(client, name: str, strategy: dict, **overrides) -> None:
    body = {**OPTIONS, "exp_name": name, "strategy": strategy, **overrides}
    created = client.post("/base-scenario/setup/", body)
    assert created.status_code == 201, created.text


def execute(client, name: str) -> None:
    queued = client.post(f"/base-scenario/{client.username}/exec/{name}")
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "queued"


def worker_pid(label: str) -> int:
    match = re.fullmatch(r".+:(\d+) \((cpu|cuda)\)", label)
    assert match, label
    return int(match.group(1))


def test_the_service_reports_the_scaled_mode(scaled):
    health = scaled.service.anonymous().get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["mode"] == "scaled"


def test_base_scenario_runs_on_two_worker_processes_at_once(two_train_workers, dana, tmp_path):
    scaled = two_train_workers
    create(dana, "replay", REPLAY)
    create(dana, "naive", {"name": "naive"})
    execute(dana, "replay")
    execute(dana, "naive")
    assert dana.wait_status("replay")["status"] == "completed"
    assert dana.wait_status("naive")["status"] == "completed"

    replay = dana.get("/base-scenario/dana/results/replay").json()
    naive = dana.get("/base-scenario/dana/results/naive").json()
    for results in (replay, naive):
        matrix = results["metrics"]["accuracy_matrix"]
        assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
        assert results["metrics"]["final_accuracy"] == pytest.approx(sum(matrix[-1]) / 5)
        assert [e["index"] for e in results["experiences"]] == [0, 1, 2, 3, 4]
        assert results["mlflow"]["run_id"]
    # The classic phenomena hold in the scaled mode too: replay remembers, naive forgets.
    assert replay["metrics"]["final_accuracy"] >= 0.8
    assert naive["metrics"]["final_accuracy"] <= 0.35 and naive["metrics"]["forgetting"] > 0.5

    # Each experiment ran on its own worker process (each worker runs one job at a time).
    workers = {scaled.row(username="dana", exp_name=name)["worker"] for name in ("replay", "naive")}
    pids = {worker_pid(label) for label in workers}
    assert pids == {proc.pid for proc in scaled.service.workers}
    assert all(label.endswith("(cpu)") for label in workers)

    download = dana.get(replay["model"]["download_url"])
    assert download.status_code == 200
    (tmp_path / "model.pt").write_bytes(download.content)
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(
        torch.load(scaled.service.data_dir / replay["model"]["save_path"], weights_only=True))


class GroupTap(AsyncJsonWebsocketConsumer):
    """A websocket that forwards whatever reaches one channel group, as the web consumer hears it."""

    group = ""

    async def connect(self) -> None:
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def push_event(self, message: dict) -> None:
        await self.send_json(message["event"])


@pytest.mark.django_db(transaction=True)
async def test_worker_events_reach_a_websocket_in_another_process_through_redis(scaled, dana, settings):
    settings.CHANNEL_LAYERS = {"default": redis_channel_layer(scaled.redis_url, scaled.huey_name)}
    await asyncio.to_thread(create, dana, "live", {"name": "naive"},
                            training={**OPTIONS["training"], "epochs": 2})
    row = await asyncio.to_thread(scaled.row, username="dana", exp_name="live")
    group = experiment_group(owner_id=row["owner_id"], name="live")
    tap = type("LiveTap", (GroupTap,), {"group": group})
    communicator = WebsocketCommunicator(tap.as_asgi(), "/tap/")
    connected, _ = await communicator.connect()
    assert connected
    try:
        # Idle for longer than redis-py's default 5 s read timeout: the websocket must stay up.
        await asyncio.sleep(7)
        await asyncio.to_thread(execute, dana, "live")
        received = []
        while not received or received[-1] != {"type": "status", "status": "completed"}:
            event = await communicator.receive_json_from(timeout=120)
            received.append({k: event[k] for k in ("type", "status") if k in event})
            if event["type"] == "epoch_end":
                received[-1]["experience"] = event["experience"]
    finally:
        await communicator.disconnect()
    statuses = [e["status"] for e in received if e["type"] == "status"]
    assert statuses == ["queued", "running", "completed"]  # queued by the web, the rest by a worker
    assert {e["experience"] for e in received if e["type"] == "epoch_end"} == {0, 1, 2, 3, 4}
    assert len([e for e in received if e["type"] == "experience_end"]) == 5


def test_a_job_asking_for_cuda_waits_for_a_cuda_worker(scaled, dana):
    create(dana, "on-gpu", {"name": "naive"}, training={**OPTIONS["training"], "device": "cuda", "epochs": 1})
    execute(dana, "on-gpu")
    # Both CPU workers see the job and put it back; it stays queued and is never claimed.
    deadline = time.time() + 60
    while scaled.worker_logs().count("asks for 'cuda' and this worker has cpu") < 2:
        assert time.time() < deadline, scaled.worker_logs()[-3000:]
        time.sleep(0.5)
    row = scaled.row(username="dana", exp_name="on-gpu")
    assert row["status"] == "queued" and row["attempts"] == 0 and row["worker"] == ""

    # A worker that advertises CUDA takes it. This machine has no GPU, so the worker is only
    # told it has one and the training itself then fails on the missing device.
    gpu = scaled.service.start_worker(extra_env={"CLAAS_WORKER_DEVICE": "cuda"})
    try:
        final = dana.wait_status("on-gpu", timeout=120)
    finally:
        scaled.service.kill_worker(gpu)
    row = scaled.row(username="dana", exp_name="on-gpu")
    assert row["attempts"] == 1 and worker_pid(row["worker"]) == gpu.pid
    assert row["worker"].endswith("(cuda)")
    if not torch.cuda.is_available():
        assert final["status"] == "failed"
        detail = dana.get("/api/experiments/on-gpu").json()
        assert "CUDA" in detail["error"]


def test_killing_one_of_two_workers_leaves_the_other_to_finish(two_train_workers, dana):
    scaled = two_train_workers
    create(dana, "crash", REPLAY, training={**OPTIONS["training"], "epochs": 5})
    execute(dana, "crash")
    deadline = time.time() + 180
    # After experience 1 ends, experience 0's checkpoint is surely on disk.
    while not any(e["type"] == "experience_end" and e["experience"] == 1
                  for e in dana.get("/api/experiments/crash/events").json()):
        assert time.time() < deadline, "the experiment never finished its second experience"
        time.sleep(0.1)
    first = scaled.row(username="dana", exp_name="crash")
    victim = next(p for p in scaled.service.workers if p.pid == worker_pid(first["worker"]))
    survivor = next(p for p in scaled.service.workers if p is not victim)
    scaled.service.kill_worker(victim)

    final = dana.wait_status("crash", timeout=240)
    assert final["status"] == "completed" and final["attempts"] == 2
    last = scaled.row(username="dana", exp_name="crash")
    assert worker_pid(last["worker"]) == survivor.pid
    events = dana.get("/api/experiments/crash/events").json()
    resumed = [e for e in events if e["type"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["from_experience"] >= 1
    results = dana.get("/base-scenario/dana/results/crash").json()
    assert [e["index"] for e in results["experiences"]] == [0, 1, 2, 3, 4]
    # Replay with few epochs: far above forgetting-level accuracy (about 0.2) after the hand-over.
    assert results["metrics"]["final_accuracy"] >= 0.7


ROUTING = """
import json
import django
django.setup()
from clserver.jobs.queues import queue_huey
from clserver.jobs.tasks import light_task, run_train_job

@light_task
def drift_check(deployment_id):
    pass

run_train_job("Experiment", 1)
drift_check(1)
print(json.dumps({queue: queue_huey(queue=queue).pending_count() for queue in ("train", "default")}))
"""


def test_training_goes_to_the_train_queue_and_light_jobs_to_the_default_queue(scaled, tmp_path):
    # A Huey name of its own: the live workers must not take these messages.
    env = {**scaled.service.env, "CLAAS_HUEY_NAME": "claasrouting", "CLAAS_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", ROUTING], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"train": 1, "default": 1}
    # With separate queues a worker must say which one it serves.
    refused = subprocess.run([sys.executable, "manage.py", "run_worker"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--queue train" in refused.stderr


def registry_version(client, name: str, alias: str | None = None, timeout: float = 120):
    """A registered version on the MLflow server (by alias once it is set), or None after `timeout`."""
    from mlflow.exceptions import MlflowException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if alias:
                return client.get_model_version_by_alias(name, alias)
            versions = client.search_model_versions(f"name='{name}'")
            if versions:
                return versions[0]
        except MlflowException:
            pass
        time.sleep(0.5)
    return None


def test_every_kind_of_version_is_registered_on_a_real_mlflow_server(scaled, dana):
    """README "Scaling out" step 2: with `mlflow server`, experiments, registered models and deployments
    all leave versions (and the deployment its aliases) in the server's registry, loadable from there."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=scaled.mlflow_url, registry_uri=scaled.mlflow_url)
    create(dana, "registry", REPLAY, training={**OPTIONS["training"], "epochs": 2})
    execute(dana, "registry")
    assert dana.wait_status("registry")["status"] == "completed"
    results = dana.get("/base-scenario/dana/results/registry").json()
    assert "errors" not in (results["mlflow"] or {}), results["mlflow"]
    assert results["model"]["mlflow_uri"] == f"models:/dana.registry/{results['model']['mlflow_version']}"
    assert registry_version(client, "dana.registry") is not None

    created = dana.post("/api/models/", {"name": "mirrored", "architecture": "simple_mlp", "params": {}})
    assert created.status_code == 201, created.text
    assert created.json()["mlflow_error"] is None
    mirrored = created.json()["versions"][0]["mlflow_version"]
    assert client.get_model_version("dana.mirrored", mirrored).version == mirrored

    # Deployment versions and aliases are written by a light job: a worker of the default queue takes it.
    light = scaled.service.start_worker(args=("run_worker", "--queue", "default"))
    try:
        deployed = dana.post("/api/deployments/", {"name": "reg", "source": {"exp_name": "registry"}})
        assert deployed.status_code == 201, deployed.text
        champion = registry_version(client, "dana.deploy.reg", alias="champion")
        assert champion is not None, scaled.worker_logs()[-3000:]
    finally:
        scaled.service.kill_worker(light)
    mlflow.set_tracking_uri(scaled.mlflow_url)
    mlflow.set_registry_uri(scaled.mlflow_url)
    scores = mlflow.pyfunc.load_model("models:/dana.deploy.reg@champion").predict(np.zeros((3, 64), np.float32))
    assert np.asarray(scores).shape == (3, 10)


def sign_in(base_url: str, username: str, password: str) -> int:
    """A browser's sign-in: the form's CSRF token, then the POST; returns the answer's status."""
    import requests

    session = requests.Session()
    form = session.get(f"{base_url}/accounts/login/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    answer = session.post(f"{base_url}/accounts/login/", data={"username": username, "password": password,
                                                                "csrfmiddlewaretoken": token},
                          headers={"Referer": f"{base_url}/accounts/login/"}, allow_redirects=False, timeout=30)
    return answer.status_code


def test_sign_in_failures_count_across_web_processes(scaled):
    """Two web processes share the cache in Redis: ten wrong passwords spread over both lock the account."""
    from tests.service import free_port, web_command

    erin = scaled.service.user("erin")
    port = free_port()
    second = scaled.service._spawn("web", web_command(port))
    try:
        other = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if requests_get(f"{other}/healthz") == 200:
                break
            time.sleep(0.3)
        urls = [scaled.service.base_url, other]
        for attempt in range(10):
            assert sign_in(urls[attempt % 2], "erin", "wrong password") == 200
        assert sign_in(urls[0], "erin", erin.password) == 429
        assert sign_in(urls[1], "erin", erin.password) == 429
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)


def requests_get(url: str) -> int:
    import requests

    try:
        return requests.get(url, timeout=5).status_code
    except requests.RequestException:
        return 0
