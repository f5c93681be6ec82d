"""Benchmark 5: `predict` latency while the worker trains an update of the same deployment, against idle."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from bench.harness import Context
from bench.report import Section, Table, Target
from bench.serving import DEPLOYMENT, _ok, claas_target, deployment_ready, load, median_of_rounds, sample_rows

CLIENTS = (1, 8)
SECONDS = 10.0
QUICK_SECONDS = 2.0
TARGET_RATIO = 1.5
ROUNDS = 5  # idle and updating take turns; medians reported (3 rounds left one noisy round deciding the 1-client figure)
UPDATE_EPOCHS = 1000  # the most an update allows: it outlasts the measurement and is cancelled afterwards
# Updates train through tensor batches: 1000 epochs over 600 rows took ~20 s here, less than a round's
# measurement. The update trains with the deployment's own settings (minibatch 32) on more rows instead.
UPDATE_MB_SIZE = 32
INGEST_ROWS = 1600


def ingest_rotated(ctx: Context) -> None:
    """Labelled, rotated digits in the buffer: the data the update will train on."""
    from clserver.training.streams import load_digits_arrays, rotate_images

    client = ctx.client()
    x, y = load_digits_arrays()
    pick = np.random.RandomState(2).choice(len(x), INGEST_ROWS, replace=False)
    rotated = rotate_images(x[pick].reshape(-1, 8, 8), 90).reshape(len(pick), 64)
    for start in range(0, INGEST_ROWS, 200):
        _ok(client.post(f"/api/deployments/{DEPLOYMENT}/ingest", {
            "inputs": rotated[start:start + 200].tolist(), "labels": y[pick][start:start + 200].tolist()}), 200)


def update_start(ctx: Context) -> int:
    """Start a long update and return once its training is under way (the first epoch ended)."""
    client = ctx.client()
    last = client.get(f"/api/deployments/{DEPLOYMENT}/events").json()
    after = last[-1]["id"] if last else 0
    update = _ok(client.post(f"/api/deployments/{DEPLOYMENT}/update",
                             {"training": {"epochs": UPDATE_EPOCHS, "train_mb_size": UPDATE_MB_SIZE, "device": "cpu"}}), 202)
    deadline = time.time() + 300
    while time.time() < deadline:
        events = client.get(f"/api/deployments/{DEPLOYMENT}/events", params={"after": after}).json()
        if any(e.get("type") == "update_progress" for e in events):
            return update["id"]
        if update_state(ctx, update["id"])["status"] in ("promoted", "rejected", "failed", "cancelled"):
            raise RuntimeError(f"update {update['id']} ended before the measurement: {update_state(ctx, update['id'])}")
        time.sleep(0.5)
    raise RuntimeError(f"update {update['id']} did not start training within 300 s")


def update_state(ctx: Context, update_id: int) -> dict[str, Any]:
    detail = ctx.client().get(f"/api/deployments/{DEPLOYMENT}").json()
    return next(u for u in detail["updates"] if u["id"] == update_id)


def update_cancel(ctx: Context, update_id: int) -> None:
    client = ctx.client()
    client.post(f"/api/deployments/{DEPLOYMENT}/updates/{update_id}/cancel")
    deadline = time.time() + 120
    while time.time() < deadline:
        if update_state(ctx, update_id)["status"] in ("cancelled", "promoted", "rejected", "failed"):
            return
        time.sleep(0.5)


def run(ctx: Context) -> Section:
    deployment_ready(ctx)
    seconds = QUICK_SECONDS if ctx.quick else SECONDS
    warmup = 0.5 if ctx.quick else 1.0
    url, headers = claas_target(ctx)
    body = {"inputs": sample_rows(1).tolist()}
    ctx.say(f"ingesting {INGEST_ROWS} labelled rotated digits")
    ingest_rotated(ctx)
    rounds = 1 if ctx.quick else ROUNDS
    idle_rounds: dict[int, list] = {c: [] for c in CLIENTS}
    busy_rounds: dict[int, list] = {c: [] for c in CLIENTS}
    still_running, update_ids = [], []
    for rnd in range(rounds):
        # Idle and updating take turns, so that a change in the machine's load hits both alike.
        for clients in CLIENTS:
            ctx.say(f"round {rnd + 1}/{rounds}, {clients} client(s): predict with the worker idle for {seconds:.0f} s")
            idle_rounds[clients].append(load(ctx, url, body, headers, clients, seconds, warmup))
        ctx.say(f"round {rnd + 1}/{rounds}: starting an update ({UPDATE_EPOCHS} epochs of replay; cancelled after "
                "the measurement)")
        update_id = update_start(ctx)
        update_ids.append(update_id)
        try:
            for clients in CLIENTS:
                ctx.say(f"round {rnd + 1}/{rounds}, {clients} client(s): predict while update {update_id} trains, "
                        f"for {seconds:.0f} s")
                busy_rounds[clients].append(load(ctx, url, body, headers, clients, seconds, warmup))
                still_running.append(update_state(ctx, update_id)["job_status"] == "running")
        finally:
            update_cancel(ctx, update_id)
    idle = {c: median_of_rounds(r) for c, r in idle_rounds.items()}
    busy = {c: median_of_rounds(r) for c, r in busy_rounds.items()}

    section = Section(5, "Interference: serving while an update trains")
    section.setup = (
        f"The deployment of benchmark 4 (`{DEPLOYMENT}`), with {INGEST_ROWS} labelled rotated digits ingested. "
        f"`predict` (one row per request, closed loop, `bench/loadgen.py` in its own process) for {seconds:.0f} s "
        f"with the worker idle, then again while the worker trains an update of the same deployment "
        f"(`POST /api/deployments/{DEPLOYMENT}/update`, replay over the buffered data and a memory of 500, "
        f"{UPDATE_EPOCHS} epochs of minibatches of {UPDATE_MB_SIZE} so that it outlasts the measurement; the "
        "measurement starts after its first "
        f"epoch and the update is cancelled afterwards), in {rounds} round(s) of idle then updating, each "
        "figure the median over the rounds. Web process and worker share the machine's "
        f"{os.cpu_count()} cores, as in the embedded mode, with its defaults: the worker runs at nice 10 "
        "(`CLAAS_WORKER_NICE`) with a 50 ms time slice, so serving gets the CPU first and a waking web thread "
        "preempts training at once, and trains on "
        + (f"{os.environ['OMP_NUM_THREADS']} torch thread(s) (`OMP_NUM_THREADS`, set for this run)"
           if os.environ.get("OMP_NUM_THREADS") else
           f"{max(1, os.cpu_count() - 1)} torch thread(s), one core fewer than the machine has "
           "(`CLAAS_TORCH_THREADS` auto), so a core stays with the web process") + ".")
    rows = []
    for clients in CLIENTS:
        a, b = idle[clients], busy[clients]
        ratio = b["p99_ms"] / a["p99_ms"]
        rows.append([clients, a["p50_ms"], a["p99_ms"], b["p50_ms"], b["p99_ms"], f"{ratio:.2f}x",
                     a["throughput_rps"], b["throughput_rps"], b["errors"]])
        section.targets.append(Target(f"{clients} client(s): predict p99 during an update over idle",
                                      f"{ratio:.2f}x ({b['p99_ms']:.1f} vs {a['p99_ms']:.1f} ms)",
                                      f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO))
    section.tables.append(Table(["clients", "idle p50 ms", "idle p99 ms", "updating p50 ms", "updating p99 ms",
                                 "p99 ratio", "idle req/s", "updating req/s", "errors while updating"], rows))
    for clients in CLIENTS:
        section.notes.append(f"{clients} client(s), p99 idle / updating in each round: " + "; ".join(
            f"{a['p99_ms']:.1f} / {b['p99_ms']:.1f} ms" for a, b in zip(idle_rounds[clients], busy_rounds[clients])))
    section.notes.append("The update was still training at the end of every measurement: "
                         + ("yes" if all(still_running) else f"no ({still_running})") + ".")
    section.data = {"idle": idle, "busy": busy, "idle_rounds": idle_rounds, "busy_rounds": busy_rounds,
                    "update_ids": update_ids, "still_running": still_running}
    return section
