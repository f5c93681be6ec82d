"""Helpers for the live-service reliability tests: rows read from the service's own database, MLflow, waits."""
from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import time
from typing import Any, Callable

from tests.service import Client, LiveService

FAST = {"architecture": "simple_mlp", "params": {"hidden_size": 64}}


def options(name: str, *, epochs: int, hidden: int = 64, strategy: dict | None = None, seed: int = 0,
            n_experiences: int = 5) -> dict[str, Any]:
    return {"exp_name": name, "model": {"architecture": "simple_mlp", "params": {"hidden_size": hidden}},
            "benchmark": {"name": "split_digits", "n_experiences": n_experiences, "seed": 1},
            "strategy": strategy or {"name": "replay", "params": {"mem_size": 200}},
            "training": {"epochs": epochs, "train_mb_size": 32, "optimizer": {"name": "sgd", "lr": 0.1,
                                                                              "momentum": 0.9},
                         "device": "cpu", "seed": seed}}


def start(client: Client, body: dict[str, Any]) -> None:
    created = client.post("/base-scenario/setup/", body)
    assert created.status_code == 201, created.text
    queued = client.post(f"/base-scenario/{client.username}/exec/{body['exp_name']}")
    assert queued.status_code == 202, queued.text


def query(service: LiveService, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Read the service's SQLite database directly (read-only), as an operator would."""
    path = service.data_dir / "claas.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, args).fetchall()]


def experiment_row(service: LiveService, username: str, name: str) -> dict[str, Any]:
    [row] = query(service, "SELECT e.* FROM clserver_experiment e JOIN auth_user u ON u.id = e.owner_id "
                           "WHERE u.username = ? AND e.name = ?", username, name)
    return row


def worker_of(service: LiveService, label: str) -> subprocess.Popen:
    """The worker process whose label ("host:pid (device)") is on a row."""
    match = re.fullmatch(r".+:(\d+) \((cpu|cuda)\)", label)
    assert match, label
    return next(p for p in service.workers if p.pid == int(match.group(1)))


def wait_for(what: str, check: Callable[[], Any], timeout: float = 300, every: float = 0.1) -> Any:
    """Poll until check() returns something truthy; the timeout covers a loaded shared machine."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def events(client: Client, name: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/experiments/{name}/events")
    assert response.status_code == 200, response.text
    return response.json()


def mlflow_client(service: LiveService) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{service.data_dir / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_runs(service: LiveService, username: str, **tags: str) -> list[Any]:
    client = mlflow_client(service)
    experiment = client.get_experiment_by_name(f"claas/{username}")
    if experiment is None:
        return []
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment.experiment_id], filter_string=where, max_results=1000)


def mlflow_versions(service: LiveService, registered: str) -> list[Any]:
    return mlflow_client(service).search_model_versions(f"name='{registered}'")
