"""Concurrency: 8 experiments submitted at once by 2 users to 2 workers, while clients poll and write.

All complete; none touches another's results (the two users run the same four option sets, so
each pair must give the same numbers); SQLite never answers "database is locked".
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pytest

from tests.reliability.live import events, mlflow_runs, mlflow_versions, options, start
from tests.service import LiveService

USERS = ("uma", "vic")
STRATEGIES = {"naive": {"name": "naive"}, "replay": {"name": "replay", "params": {"mem_size": 100}},
              "ewc": {"name": "ewc", "params": {"ewc_lambda": 1.0}}, "lwf": {"name": "lwf"}}
EPOCHS = 2
# Two experiences give each job the same mix of writes (epochs, experience ends, checkpoints) as five,
# with fewer of the per-experience checkpoints that made most of its run time.
N_EXPERIENCES = 2


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveService]:
    service = LiveService(tmp_path_factory.mktemp("concurrency"), workers=2).start()
    yield service
    service.stop()


class Traffic:
    """Clients that read every status, result and event list, and write, while the jobs run."""

    def __init__(self, clients: dict) -> None:
        self.clients = clients
        self.stop = threading.Event()
        self.requests = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.read, args=(seed,)) for seed in range(4)]
        self.threads += [threading.Thread(target=self.write, args=(user,)) for user in USERS]

    def check(self, response, what: str) -> None:
        self.requests += 1
        if response.status_code >= 500 or "database is locked" in response.text:
            self.failures.append(f"{what}: {response.status_code} {response.text[:200]}")

    def read(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            user = rng.choice(USERS)
            client, name = self.clients[user], rng.choice(list(STRATEGIES))
            path = rng.choice([f"/base-scenario/{user}/status/{name}", f"/base-scenario/{user}/results/{name}",
                               f"/api/experiments/{name}/events", "/api/experiments/"])
            self.check(client.get(path), path)
            time.sleep(0.02)

    def write(self, user: str) -> None:
        """Setups (with overwrite) of a scratch experiment: writes racing the workers' event writes."""
        client = self.clients[user]
        while not self.stop.is_set():
            self.check(client.post("/base-scenario/setup/", {**options("scratch", epochs=1), "overwrite": True}),
                       "setup scratch")
            time.sleep(1.0)

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_eight_experiments_of_two_users_on_two_workers_complete_apart(live):
    clients = {user: live.user(user) for user in USERS}
    jobs = [(user, name) for user in USERS for name in STRATEGIES]
    with Traffic(clients) as traffic:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:  # all eight submitted at once
            list(pool.map(lambda job: start(clients[job[0]], options(
                job[1], epochs=EPOCHS, n_experiences=N_EXPERIENCES, strategy=STRATEGIES[job[1]])), jobs))
        finals = {job: clients[job[0]].wait_status(job[1], timeout=900) for job in jobs}
    assert {job: (f["status"], f["error"]) for job, f in finals.items()} == {job: ("completed", None) for job in jobs}
    assert traffic.requests > 100 and traffic.failures == []

    results = {job: clients[job[0]].get(f"/base-scenario/{job[0]}/results/{job[1]}").json() for job in jobs}
    for (user, name), body in results.items():
        assert body["exp_name"] == name and body["config"]["strategy"]["name"] == STRATEGIES[name]["name"]
        assert [e["index"] for e in body["experiences"]] == list(range(N_EXPERIENCES))
        history = events(clients[user], name)
        assert {e["epochs"] for e in history if e["type"] == "epoch_end"} == {EPOCHS}
        assert len([e for e in history if e["type"] == "epoch_end"]) == N_EXPERIENCES * EPOCHS
        [run] = mlflow_runs(live, user, **{"claas.experiment": name})
        assert run.data.params["exp_name"] == name and run.info.run_id == body["mlflow"]["run_id"]
        assert len(mlflow_versions(live, f"{user}.{name}")) == 1
    # Same options and seed, different users and workers, run side by side: the same numbers.
    for name in STRATEGIES:
        np.testing.assert_allclose(results[("uma", name)]["metrics"]["accuracy_matrix"],
                                   results[("vic", name)]["metrics"]["accuracy_matrix"], rtol=0, atol=1e-6)
    # Each final model is its own file.
    paths = {body["model"]["save_path"] for body in results.values()}
    assert len(paths) == len(jobs)
    for log in live.logs:
        assert "database is locked" not in log.read_text(errors="replace"), log
