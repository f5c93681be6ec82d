"""Benchmark 4: `predict` of a CLaaS deployment against `mlflow models serve` of the same registered
model version, at 1, 8 and 32 concurrent clients, in the same run.

The deployment set up here (a trained `simple_mlp` on split_digits) is shared with benchmark 5.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from bench.harness import PYTHON, ROOT, Context, rss_mb, run_json, uss_mb
from bench.report import Section, Table, Target

DEPLOYMENT = "serve"
SOURCE = "serve-source"
CONCURRENCY = (1, 8, 32)
SECONDS = 10.0
ROUNDS = 3  # per concurrency and side, taking turns going first; medians reported
WARMUP_S = 1.0
QUICK_SECONDS = 2.0
START_TIMEOUT_S = 180


def free_port() -> int:
    from tests.service import free_port as pick

    return pick()


def deployment_ready(ctx: Context) -> dict[str, Any]:
    """A completed source experiment, a deployment of it, and its version 1 registered in MLflow."""
    shared = ctx.shared
    if "deployment" in shared:
        return shared["deployment"]
    client = ctx.client()
    body = {"exp_name": SOURCE, "model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
            "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
            "strategy": {"name": "replay", "params": {"mem_size": 200}},
            "training": {"epochs": 1 if ctx.quick else 3, "device": "cpu", "seed": 0}, "overwrite": True}
    ctx.say("training the model to deploy (split_digits, replay) through the API")
    _ok(client.post("/base-scenario/setup/", body), 201)
    _ok(client.post(f"/base-scenario/{client.username}/exec/{SOURCE}"), 202)
    status = client.wait_status(SOURCE, timeout=900)
    if status["status"] != "completed":
        raise RuntimeError(f"the source experiment ended {status['status']}")
    client.delete(f"/api/deployments/{DEPLOYMENT}")
    ctx.say("deploying it (ks detector, manual updates) and waiting for its MLflow registration")
    created = _ok(client.post("/api/deployments/", {
        "name": DEPLOYMENT, "source": {"exp_name": SOURCE}, "detector": {"name": "ks"},
        "update": {"trigger": "manual", "min_samples": 100, "memory_size": 500}}), 201)
    deadline = time.time() + START_TIMEOUT_S
    version = None
    while time.time() < deadline:
        detail = client.get(f"/api/deployments/{DEPLOYMENT}").json()
        version = detail["versions"][0].get("mlflow_version")
        if version:
            break
        time.sleep(0.5)
    if not version:
        raise RuntimeError("the deployment's version 1 was not registered in MLflow in time")
    shared["deployment"] = {"registered": created["mlflow"]["registered_name"], "mlflow_version": str(version),
                            "champion_version": created["champion_version"]}
    return shared["deployment"]


def _ok(response: requests.Response, code: int) -> dict[str, Any]:
    if response.status_code != code:
        raise RuntimeError(f"{response.request.method} {response.url} answered {response.status_code}: "
                           f"{response.text[:300]}")
    return response.json() if response.content else {}


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    from clserver.training.streams import load_digits_arrays

    x, _ = load_digits_arrays()
    return x[np.random.RandomState(seed).choice(len(x), n, replace=False)]


class MlflowServer:
    """`mlflow models serve` of a registered version, from the service's own MLflow store."""

    def __init__(self, ctx: Context, registered: str, version: str) -> None:
        live = ctx.service()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = live.data_dir / "mlflow-serve.log"
        # MLflow starts `uvicorn` by name: the virtual environment's bin folder must be on PATH.
        path = f"{Path(PYTHON).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": f"sqlite:///{live.data_dir / 'mlflow.db'}",
                    "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
        self.argv = [str(Path(PYTHON).parent / "mlflow"), "models", "serve", "-m", f"models:/{registered}/{version}",
                     "--env-manager", "local", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc: subprocess.Popen | None = None
        self.start_s = 0.0

    def start(self) -> "MlflowServer":
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow models serve exited:\n" + self.log.read_text()[-3000:])
            try:
                if requests.get(self.url + "/ping", timeout=2).status_code == 200:
                    self.start_s = time.perf_counter() - started
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("mlflow models serve did not answer /ping in time:\n" + self.log.read_text()[-3000:])

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class DjangoPathServer:
    """A second CLaaS web process on the same data dir with the predict fast path off
    (`CLAAS_PREDICT_FAST_PATH=0`): every `predict` through Django's middleware, DRF and the same view."""

    def __init__(self, ctx: Context) -> None:
        from tests.service import web_command

        self.live = ctx.service()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = web_command(self.port)
        self.proc: subprocess.Popen | None = None

    def start(self, token_header: str, body: dict[str, Any], path: str) -> "DjangoPathServer":
        env = self.live.env
        self.live.env = {**env, "CLAAS_PREDICT_FAST_PATH": "0"}
        try:
            self.proc = self.live._spawn("web-django-path", self.argv)
        finally:
            self.live.env = env
        deadline = time.perf_counter() + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the web process without the fast path exited:\n" + self.live.logs[-1].read_text()[-3000:])
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.05)
        name, _, value = token_header.partition(":")
        warm = requests.post(self.url + path, json=body, headers={name: value.strip()}, timeout=120)  # loads the model
        if warm.status_code != 200:
            raise RuntimeError(f"predict through Django answered {warm.status_code}: {warm.text[:300]}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            import signal

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def load(ctx: Context, url: str, body: dict[str, Any], headers: list[str], clients: int, seconds: float,
         warmup: float) -> dict[str, Any]:
    """Run bench.loadgen in its own process against `url`."""
    path = ctx.workdir / f"body-{abs(hash(url)) % 10**8}.json"
    path.write_text(json.dumps(body))
    args = ["--url", url, "--body", str(path), "--clients", str(clients), "--seconds", str(seconds),
            "--warmup", str(warmup)]
    for header in headers:
        args += ["--header", header]
    return run_json("bench.loadgen", args, timeout=seconds + warmup + 120)


def median_of_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the median over the rounds (errors are summed)."""
    import statistics

    out = dict(rounds[0])
    for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms"):
        out[key] = statistics.median(r[key] for r in rounds)
    out["errors"] = sum(r["errors"] for r in rounds)
    out["requests"] = sum(r["requests"] for r in rounds)
    out["rounds"] = len(rounds)
    return out


def claas_target(ctx: Context) -> tuple[str, list[str]]:
    client = ctx.client()
    return (f"{client.base_url}/api/deployments/{DEPLOYMENT}/predict",
            [f"Authorization: {client.session.headers['Authorization']}"])


def same_answers(ctx: Context, mlflow_url: str) -> tuple[int, int]:
    """Both servers answer the same class for the same rows (MLflow returns the logits)."""
    rows = sample_rows(64, seed=1)
    claas = _ok(ctx.client().post(f"/api/deployments/{DEPLOYMENT}/predict", {"inputs": rows.tolist()}), 200)
    response = requests.post(mlflow_url + "/invocations", json={"inputs": rows.tolist()}, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"mlflow /invocations answered {response.status_code}: {response.text[:300]}")
    logits = np.asarray(response.json()["predictions"])
    return int((np.asarray(claas["predictions"]) == logits.argmax(axis=1)).sum()), len(rows)


def run(ctx: Context) -> Section:
    info = deployment_ready(ctx)
    seconds = QUICK_SECONDS if ctx.quick else SECONDS
    warmup = 0.5 if ctx.quick else WARMUP_S
    ctx.say(f"starting mlflow models serve -m models:/{info['registered']}/{info['mlflow_version']}")
    mlflow = MlflowServer(ctx, info["registered"], info["mlflow_version"]).start()
    ctx.shared["mlflow_start"] = {"to_ping_s": mlflow.start_s, "rss_mb": mlflow.rss_mb()}
    django_path = DjangoPathServer(ctx)
    try:
        agree, total = same_answers(ctx, mlflow.url)
        body = {"inputs": sample_rows(1).tolist()}
        url, headers = claas_target(ctx)
        ctx.say("starting a second web process with the predict fast path off (predict through Django)")
        django_path.start(headers[0], body, url.removeprefix(ctx.client().base_url))
        django_url = django_path.url + url.removeprefix(ctx.client().base_url)
        results: list[tuple[int, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        rounds = 1 if ctx.quick else ROUNDS
        for clients in CONCURRENCY:
            ours_rounds, theirs_rounds, django_rounds = [], [], []
            for r in range(rounds):
                ctx.say(f"{clients} client(s), round {r + 1}/{rounds}: CLaaS, CLaaS through Django and mlflow "
                        f"models serve, {seconds:.0f} s each")
                claas = lambda: ours_rounds.append(load(ctx, url, body, headers, clients, seconds, warmup))  # noqa: E731
                theirs = lambda: theirs_rounds.append(  # noqa: E731
                    load(ctx, mlflow.url + "/invocations", body, [], clients, seconds, warmup))
                via_django = lambda: django_rounds.append(  # noqa: E731
                    load(ctx, django_url, body, headers, clients, seconds, warmup))
                for measure in ((claas, via_django, theirs) if r % 2 == 0 else (theirs, via_django, claas)):
                    measure()
            ours, theirs = median_of_rounds(ours_rounds), median_of_rounds(theirs_rounds)
            django = median_of_rounds(django_rounds)
            results.append((clients, ours, theirs, django))
            ctx.say(f"{clients} client(s): CLaaS {ours['throughput_rps']:.0f} req/s p99 {ours['p99_ms']:.1f} ms; "
                    f"MLflow {theirs['throughput_rps']:.0f} req/s p99 {theirs['p99_ms']:.1f} ms")
        ctx.shared["mlflow_rss_after_load_mb"] = mlflow.rss_mb()
        ctx.shared["web_rss_after_load_mb"] = rss_mb(ctx.service().web.pid)
        ctx.shared["web_uss_after_load_mb"] = uss_mb(ctx.service().web.pid)
    finally:
        mlflow.stop()
        django_path.stop()

    section = Section(4, "Serving: CLaaS `predict` against `mlflow models serve`")
    section.setup = (
        f"The same model on both sides: a `simple_mlp` trained on split_digits through the API, deployed as "
        f"`{DEPLOYMENT}` (its version 1 is registered by CLaaS in MLflow as `{info['registered']}` version "
        f"{info['mlflow_version']}), and `mlflow models serve -m models:/{info['registered']}/"
        f"{info['mlflow_version']} --env-manager local` (one uvicorn worker, its default) on the service's own "
        f"MLflow store. CLaaS is one uvicorn web process, token authentication on every request. Each request "
        f"predicts one row of 64 features (`{{\"inputs\": [[...]]}}` on both). The load generator "
        f"(`bench/loadgen.py`, aiohttp, closed loop: every client sends its next request when the answer "
        f"arrives) runs in its own process on loopback, {seconds:.0f} s per measurement after {warmup:.0f} s "
        f"of warm-up; at each concurrency CLaaS and MLflow are measured in {1 if ctx.quick else ROUNDS} "
        f"round(s), taking turns going first, and each figure is the median over the rounds. Both servers gave the same class for "
        f"{agree} of {total} test rows (MLflow answers logits; CLaaS answers the class).")
    rows = []
    for clients, ours, theirs, django in results:
        rows.append([clients, ours["throughput_rps"], theirs["throughput_rps"],
                     f"{ours['throughput_rps'] / max(theirs['throughput_rps'], 1e-9):.2f}x",
                     ours["p50_ms"], theirs["p50_ms"], ours["p99_ms"], theirs["p99_ms"],
                     f"{ours['errors']} / {theirs['errors']} / {django['errors']}", django["throughput_rps"], django["p99_ms"],
                     f"{ours['throughput_rps'] / max(django['throughput_rps'], 1e-9):.2f}x"])
        ahead = ours["throughput_rps"] > theirs["throughput_rps"] and ours["p99_ms"] < theirs["p99_ms"]
        section.targets.append(Target(
            f"{clients} client(s): CLaaS ahead of MLflow (throughput and p99)",
            f"{ours['throughput_rps']:.0f} vs {theirs['throughput_rps']:.0f} req/s, p99 {ours['p99_ms']:.1f} vs "
            f"{theirs['p99_ms']:.1f} ms", "ahead on both", ahead))
    clients, ours, theirs, _ = results[-1]
    ratio = ours["throughput_rps"] / max(theirs["throughput_rps"], 1e-9)
    section.targets.append(Target(f"{clients} clients: CLaaS throughput at least 2.0x MLflow's",
                                  f"{ratio:.2f}x", ">= 2.0x", ratio >= 2.0))
    section.tables.append(Table(["clients", "CLaaS req/s", "MLflow req/s", "throughput ratio", "CLaaS p50 ms",
                                 "MLflow p50 ms", "CLaaS p99 ms", "MLflow p99 ms", "errors (CLaaS / MLflow / through Django)",
                                 "through Django req/s", "through Django p99 ms", "fast path / Django"],
                                rows))
    section.notes.append(f"`mlflow models serve` answered /ping {mlflow.start_s:.1f} s after it was started.")
    section.notes.append(
        "Per request, CLaaS checks the token and finds the caller's deployment and its champion version in "
        "the database (one query, so a rotated token or a rollback takes effect on the next request), validates "
        "the inputs as the API does and answers the class with the version that made it. Token calls to "
        "`predict` are served by an ASGI layer in front of Django (`clserver/serving/predict_fast.py`) on a pool of 4 "
        "threads; any other request, and any call that is not a plain success, goes through Django and DRF. "
        "Concurrent calls on the same champion version are gathered for at most `CLAAS_PREDICT_BATCH_MS` (2 ms) "
        "into one forward pass (`clserver/serving/batching.py`); a call that arrives alone runs at once. "
        "MLflow's scoring server is one FastAPI route around `pyfunc.predict`, without authentication or a "
        "database.")
    section.notes.append(
        "The web process freezes its long-lived objects out of the garbage collector "
        "(`clserver/serving/long_lived.py`); without that, collector pauses of 1 to 2 ms every 150 or so requests "
        "set CLaaS's p99.")
    section.notes.append(
        "\"through Django\" is a second CLaaS web process on the same data dir with `CLAAS_PREDICT_FAST_PATH=0`: the "
        "same calls through Django's middleware, DRF's authentication, negotiation and throttles and the API view "
        "(the same validation and model cache; no micro-batching, so each call is its own forward pass). "
        "The last column is why the fast path stays: it is what Django's own stack costs per call.")
    section.data = {"results": [{"clients": c, "claas": a, "mlflow": b, "through_django": d} for c, a, b, d in results],
                    "agreement": [agree, total]}
    return section
