"""Micro-batched predict (issue 18): concurrent calls on one champion version share one forward pass.

Each caller gets exactly its own rows and the version that computed them; a rollback between calls
never mixes versions in a batch; `CLAAS_PREDICT_BATCH_MS=0` runs one forward pass per call. The
forward passes are counted from the web process's own log (`CLAAS_LOG_LEVEL=DEBUG`: one line per
pass, with its version, calls and rows).
"""
from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests

from clserver.serving.batching import PredictBatcher, predict_many
from tests.service import Client, LiveService

WINDOW_MS = "20"  # wide, so that calls overlap on a busy test machine too
N_CALLS = 48
PASS = re.compile(r"predict forward pass: version=(\d+) calls=(\d+) rows=(\d+)")
FINISHED = ("promoted", "rejected", "failed", "cancelled")


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[LiveService]:
    live = LiveService(tmp_path_factory.mktemp("batching"), workers=1,
                       env={"CLAAS_PREDICT_BATCH_MS": WINDOW_MS, "CLAAS_LOG_LEVEL": "DEBUG"}).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def pat(service) -> Client:
    return service.user("pat")


@pytest.fixture(scope="module")
def deployment(service, pat) -> dict[str, Any]:
    """`dep` with two versions that disagree on many rows: 1 (the registered model's initial weights)
    and 2 (an update on random labels, promoted whatever its accuracy)."""
    rng = np.random.RandomState(0)
    x = (rng.randn(400, 64) * 3).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x[:100], y=np.arange(100) % 10)
    assert pat.post("/api/datasets/", files={"file": ("d.npz", buffer.getvalue())},
                    data={"name": "ref"}).status_code == 201
    assert pat.post("/api/models/", {"name": "m", "architecture": "simple_mlp",
                                     "params": {"hidden_size": 32}}).status_code == 201
    created = pat.post("/api/deployments/", {
        "name": "dep", "source": {"registered": "m", "reference": "ref"}, "detector": {"name": "ks"},
        "update": {"trigger": "manual", "min_samples": 1, "tolerance": 1.0,
                   "training": {"epochs": 5, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}}})
    assert created.status_code == 201, created.text
    ingested = pat.post("/api/deployments/dep/ingest", {"inputs": x[100:300].tolist(),
                                                        "labels": rng.randint(0, 10, 200).tolist()})
    assert ingested.status_code == 200, ingested.text
    queued = pat.post("/api/deployments/dep/update", {})
    assert queued.status_code == 202, queued.text
    deadline = time.time() + 300
    while time.time() < deadline:
        update = {u["id"]: u for u in pat.get("/api/deployments/dep").json()["updates"]}[queued.json()["id"]]
        if update["status"] in FINISHED:
            break
        time.sleep(0.5)
    assert update["status"] == "promoted", update
    rows = x[300:]
    reference = {}
    for version in (1, 2):
        assert pat.post("/api/deployments/dep/rollback", {"version": version}).status_code == 200
        reference[version] = one_by_one(pat, rows, version)
    return {"rows": rows, "reference": reference}


def one_by_one(client: Client, rows: np.ndarray, version: int) -> np.ndarray:
    """Each row's class from a call of its own, made after the previous one was answered."""
    out = []
    for row in rows:
        body = client.post("/api/deployments/dep/predict", {"inputs": [row.tolist()]}).json()
        assert body["model_version"] == version
        out.extend(body["predictions"])
    return np.asarray(out)


def calls_at_once(client: Client, bodies: list[list[list[float]]]) -> list[dict[str, Any]]:
    """Every body sent at the same moment, each on its own connection; the answers in order."""
    start = threading.Barrier(len(bodies))
    headers = {"Authorization": client.session.headers["Authorization"]}

    def call(inputs: list[list[float]]) -> dict[str, Any]:
        start.wait()
        response = requests.post(f"{client.base_url}/api/deployments/dep/predict", json={"inputs": inputs},
                                 headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(call, bodies))


def forward_passes(log: Path) -> list[tuple[int, int, int]]:
    """(version, calls, rows) of every forward pass the web process logged so far."""
    return [tuple(map(int, m.groups())) for m in PASS.finditer(log.read_text())]


def pieces(rows: np.ndarray, n: int) -> list[np.ndarray]:
    """n calls of 1, 2 or 3 rows each, different rows in each call."""
    bounds = np.cumsum([0] + [1 + i % 3 for i in range(n)])
    return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@contextmanager
def web_with_window(service: LiveService, window_ms: str) -> Iterator[Path]:
    """The web process restarted with another batching window; yields its log."""
    before = service.env
    service.stop_web()
    service.env = {**before, "CLAAS_PREDICT_BATCH_MS": window_ms}
    try:
        service.start_web()
        yield service.logs[-1]
    finally:
        service.stop_web()
        service.env = before
        service.start_web()


def web_log(service: LiveService) -> Path:
    return [log for log in service.logs if log.name.startswith("web-")][-1]


# --- through HTTP ------------------------------------------------------------------------------------
def test_concurrent_calls_share_forward_passes_and_each_gets_its_own_rows(service, pat, deployment):
    version = pat.get("/api/deployments/dep").json()["champion_version"]
    calls = pieces(np.arange(len(deployment["rows"])), N_CALLS)
    log = web_log(service)
    seen = len(forward_passes(log))
    answers = calls_at_once(pat, [deployment["rows"][i].tolist() for i in calls])
    passes = forward_passes(log)[seen:]
    for index, answer in zip(calls, answers):
        assert answer["model_version"] == version
        assert answer["predictions"] == deployment["reference"][version][index].tolist()
    assert sum(p[1] for p in passes) == N_CALLS and sum(p[2] for p in passes) == sum(map(len, calls))
    assert len(passes) < N_CALLS and max(p[1] for p in passes) > 1, passes
    print(f"\n{N_CALLS} calls answered by {len(passes)} forward passes: {[p[1] for p in passes]}")


def test_during_rollbacks_each_answer_is_what_its_own_version_computes(service, pat, deployment):
    reference = deployment["reference"]
    differ = np.flatnonzero(reference[1] != reference[2])
    assert len(differ) >= 20, "the two versions must disagree on enough rows to show a mix-up"
    calls = pieces(differ, min(N_CALLS, len(differ) // 2))
    log = web_log(service)
    seen = len(forward_passes(log))
    stop, rollbacks = threading.Event(), []

    def roll() -> None:
        target = 1
        while not stop.is_set():
            response = pat.post("/api/deployments/dep/rollback", {"version": target})
            assert response.status_code == 200, response.text
            rollbacks.append(target)
            target = 3 - target
            time.sleep(0.005)

    roller = threading.Thread(target=roll)
    roller.start()
    answers: list[tuple[np.ndarray, dict[str, Any]]] = []
    try:
        rounds = 0
        while rounds < 6 or (len(rollbacks) < 4 and rounds < 40):  # rollbacks go through Django: slower
            answers += zip(calls, calls_at_once(pat, [deployment["rows"][i].tolist() for i in calls]))
            rounds += 1
    finally:
        stop.set()
        roller.join()
    versions = {answer["model_version"] for _, answer in answers}
    assert versions == {1, 2}, f"the rollbacks did not land between the calls ({len(rollbacks)} rollbacks)"
    for index, answer in answers:
        assert answer["predictions"] == reference[answer["model_version"]][index].tolist()
    passes = forward_passes(log)[seen:]
    assert sum(p[1] for p in passes) == len(answers) and len(passes) < len(answers)
    assert {p[0] for p in passes} == versions
    print(f"\n{len(answers)} calls, {len(rollbacks)} rollbacks, {len(passes)} forward passes")


def test_a_zero_window_runs_one_forward_pass_per_call(service, pat, deployment):
    version = pat.get("/api/deployments/dep").json()["champion_version"]
    calls = pieces(np.arange(len(deployment["rows"])), N_CALLS)
    with web_with_window(service, "0") as log:
        seen = len(forward_passes(log))
        answers = calls_at_once(pat, [deployment["rows"][i].tolist() for i in calls])
        passes = forward_passes(log)[seen:]
    for index, answer in zip(calls, answers):
        assert answer == {"predictions": deployment["reference"][version][index].tolist(), "model_version": version}
    assert len(passes) == N_CALLS and {p[1] for p in passes} == {1}
    assert sorted(p[2] for p in passes) == sorted(map(len, calls))


# --- the batcher itself (in-process) --------------------------------------------------------------
def doubled(xs: list[np.ndarray]) -> list[np.ndarray]:
    return [x * 2 for x in xs]


def failing(xs: list[np.ndarray]) -> list[np.ndarray]:
    raise ValueError("the forward pass failed")


async def test_an_error_in_a_batch_reaches_every_caller_of_that_batch_and_no_other():
    with ThreadPoolExecutor(2) as pool:
        batcher = PredictBatcher(loop=asyncio.get_running_loop(), executor=pool, window_s=1.0)
        for _ in range(5):
            batcher.expect()
        bad = [batcher.join("a", np.ones((1, 2)), failing) for _ in range(3)]
        good = [batcher.join("b", np.full((2, 2), float(i)), doubled) for i in range(2)]
        results = await asyncio.gather(*bad, *good, return_exceptions=True)
    assert [str(r) for r in results[:3]] == ["the forward pass failed"] * 3
    assert [r.tolist() for r in results[3:]] == [[[0.0, 0.0]] * 2, [[2.0, 2.0]] * 2]


async def test_a_batch_runs_when_nobody_else_is_coming_at_the_cap_or_at_the_end_of_the_window():
    loop = asyncio.get_running_loop()
    runs: list[int] = []

    def counted(xs: list[np.ndarray]) -> list[np.ndarray]:
        runs.append(len(xs))
        return xs

    with ThreadPoolExecutor(2) as pool:
        batcher = PredictBatcher(loop=loop, executor=pool, window_s=0.2, max_rows=4)
        batcher.expect()
        batcher.expect()
        first = batcher.join("k", np.zeros((1, 3)), counted)
        batcher.leave()  # the other one went to Django: nobody left to wait for
        await asyncio.wait_for(first, 0.15)
        assert runs == [1]

        for _ in range(4):
            batcher.expect()
        started = loop.time()
        capped = [batcher.join("k", np.zeros((2, 3)), counted) for _ in range(3)]  # 2 + 2 rows reach the cap
        await asyncio.wait_for(asyncio.gather(*capped[:2]), 0.15)
        assert runs == [1, 2] and not capped[2].done()
        await capped[2]  # one expected call never comes: the window ends the wait
        assert loop.time() - started >= 0.19 and runs == [1, 2, 1]
        batcher.leave()


def test_predict_many_splits_one_forward_pass_back_into_each_calls_rows():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).eval()
    rng = np.random.RandomState(0)
    xs = [rng.randn(n, 4).astype(np.float32) * 3 for n in (1, 3, 2, 5)]
    alone = [model(torch.from_numpy(x)).argmax(dim=1).numpy().tolist() for x in xs]
    assert [p.tolist() for p in predict_many(model, xs, version=1)] == alone
