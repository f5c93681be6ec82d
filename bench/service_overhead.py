"""Benchmark 2: the same experiment through the REST API and worker, as a plain Avalanche script,
and as a hand-written PyTorch loop, in the same run."""
from __future__ import annotations

import time
from typing import Any

from bench.harness import Context, median, run_json
from bench.report import Section, Table, Target

EPOCHS = 10
MEM_SIZE = 200
TARGET_TIME_RATIO = 1.10
TARGET_ACCURACY = 0.01
TARGET_PROGRAM_RATIO = 1.20
PROGRAM_MODEL = "bench-simple-mlp-pt2"
POLL_S = 1.0  # status polls are web-process work beside the training: keep them rare


def options(name: str, epochs: int) -> dict[str, Any]:
    return {
        "exp_name": name,
        "model": {"architecture": "simple_mlp", "params": {"hidden_size": 128}},
        "benchmark": {"name": "split_digits", "n_experiences": 5, "seed": 1},
        "strategy": {"name": "replay", "params": {"mem_size": MEM_SIZE}},
        "training": {"epochs": epochs, "train_mb_size": 32, "eval_mb_size": 256,
                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "device": "cpu", "seed": 0},
    }


def script_args(epochs: int) -> list[str]:
    return ["--data", "digits", "--n-experiences", "5", "--stream-seed", "1", "--arch", "simple_mlp",
            "--input-shape", "64", "--hidden-size", "128", "--mem-size", str(MEM_SIZE), "--epochs", str(epochs),
            "--train-mb", "32", "--eval-mb", "256", "--lr", "0.1", "--momentum", "0.9", "--device", "cpu",
            "--seed", "0"]


def program_upload(client: Any) -> None:
    """Register a torch.export copy of the zoo's simple_mlp holding the initial weights the worker builds.

    The worker seeds torch with the training seed and then builds the zoo model; the same here gives the
    same weights, so the program and the zoo model train from the same start and draw the same dropout.
    """
    import io

    import torch

    from modelfactory.zoo import mlp_net

    torch.manual_seed(0)
    model = mlp_net([64], 10, [128], 0.5).eval()
    program = torch.export.export(model, (torch.zeros(2, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    client.delete(f"/api/models/{PROGRAM_MODEL}")
    created = client.post("/api/models/", files={"file": ("simple_mlp.pt2", buffer.getvalue())},
                          data={"name": PROGRAM_MODEL})
    if created.status_code != 201:
        raise RuntimeError(f"uploading the program answered {created.status_code}: {created.text[:300]}")


def program_options(name: str, epochs: int) -> dict[str, Any]:
    return {**options(name, epochs), "model": {"registered": PROGRAM_MODEL}}


def run_service(client: Any, body: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Set up, execute and wait for one experiment over HTTP; the runner's own figures come back."""
    name = body["exp_name"]
    created = client.post("/base-scenario/setup/", {**body, "overwrite": True})
    if created.status_code != 201:
        raise RuntimeError(f"setup of {name} answered {created.status_code}: {created.text[:300]}")
    started = time.perf_counter()
    queued = client.post(f"/base-scenario/{client.username}/exec/{name}")
    if queued.status_code != 202:
        raise RuntimeError(f"exec of {name} answered {queued.status_code}: {queued.text[:300]}")
    deadline = started + timeout
    while time.perf_counter() < deadline:
        status = client.get(f"/base-scenario/{client.username}/status/{name}").json()["status"]
        if status in ("completed", "failed", "cancelled"):
            break
        time.sleep(POLL_S)
    else:
        raise RuntimeError(f"{name} did not finish in {timeout:.0f} s")
    seen = time.perf_counter() - started
    results = client.get(f"/base-scenario/{client.username}/results/{name}").json()
    if results.get("status") != "completed":
        raise RuntimeError(f"{name} ended {results.get('status')}: {results.get('error')}")
    return {"train_time_s": results["cost"]["train_time_s"], "eval_time_s": results["cost"].get("eval_time_s"),
            "wall_time_s": results["cost"].get("wall_time_s"), "seen_done_s": seen,
            "final_accuracy": results["metrics"]["final_accuracy"],
            "accuracy_row": results["metrics"]["accuracy_matrix"][-1],
            "samples": results["cost"]["samples_processed"], "torch_threads": results["cost"].get("torch_threads")}


def run(ctx: Context) -> Section:
    epochs = 2 if ctx.quick else EPOCHS
    repeats = 1 if ctx.quick else 3
    client = ctx.client()
    runs: dict[str, list[dict[str, Any]]] = {"service": [], "plain": [], "raw": [], "program": []}
    program_upload(client)

    def same_threads() -> dict[str, str]:
        """The scripts get the compute threads the worker trained with (the service runs first)."""
        threads = str(runs["service"][0]["torch_threads"])
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    contenders = {
        "service": ("through the REST API and the worker",
                    lambda rep: run_service(client, options(f"overhead-{rep}", epochs))),
        "plain": ("plain Avalanche script",
                  lambda rep: run_json("bench.plain_avalanche", script_args(epochs), timeout=900,
                                       env=same_threads())),
        "raw": ("raw PyTorch loop", lambda rep: run_json("bench.raw_torch", script_args(epochs), timeout=900,
                                                         env=same_threads())),
        "program": ("an uploaded torch.export copy of simple_mlp through the REST API and the worker",
                    lambda rep: run_service(client, program_options(f"overhead-program-{rep}", epochs))),
    }
    for rep in range(repeats):
        # Interleaved, and in turn first, so that a change in the machine's load hits all alike.
        order = (["service", "plain", "raw", "program"] if rep % 2 == 0 else ["plain", "program", "service", "raw"])
        for key in order:
            ctx.say(f"round {rep + 1}/{repeats}: {contenders[key][0]}")
            runs[key].append(contenders[key][1](rep))
        ctx.say("train s: service {:.2f}, plain {:.2f}, raw {:.2f}, program {:.2f}".format(
            *(runs[k][-1]["train_time_s"] for k in ("service", "plain", "raw", "program"))))

    t = {k: median([r["train_time_s"] for r in v]) for k, v in runs.items()}
    acc = {k: v[-1]["final_accuracy"] for k, v in runs.items()}
    ratio = t["service"] / t["plain"]
    diff = abs(acc["service"] - acc["plain"])
    program_ratio = t["program"] / t["service"]
    program_diff = abs(acc["program"] - acc["service"])
    section = Section(2, "Service overhead: REST API + worker against a plain Avalanche script")
    section.setup = (
        f"`split_digits` (5 experiences, seed 1), `simple_mlp` (hidden 128), `replay` (memory {MEM_SIZE}), "
        f"{epochs} epochs, minibatch 32, SGD lr 0.1 momentum 0.9, seed 0, CPU, "
        f"{runs['service'][0]['torch_threads']} torch compute thread(s) in every contender (what the worker trained "
        f"with, `CLAAS_TORCH_THREADS` auto; the scripts get the same through `OMP_NUM_THREADS`); {repeats} rounds, each running the three one after the other (service and plain script take "
        "turns going first); medians shown. **(a) service**: `POST /base-scenario/setup/` and "
        "`exec` against the web process with one `run_huey` worker; the time is the runner's own timer "
        "(`results.cost.train_time_s`, the sum of the `strategy.train()` calls), with its progress events "
        "(the row and one event per epoch, one transaction) and heartbeats inside it; the per-epoch losses go "
        "to MLflow in one call after each experience's training. The runner takes each minibatch by indexing "
        "tensors gathered once per experience (`clserver/training/tensor_batches.py`): the same minibatches and "
        "random draws as Avalanche's loader, without its per-sample `dataset[i]` calls and collation. "
        "**(b) plain Avalanche**: a fresh Python process "
        "(`bench/plain_avalanche.py`) with the same arrays, Avalanche's `SimpleMLP` (the same layers, so the "
        "same initial weights), tensor datasets and `benchmark_from_datasets`, `Naive` + `ReplayPlugin`, and "
        "Avalanche's own evaluation (`accuracy_metrics`, `strategy.eval` on the test stream after each "
        "experience); its timer is the same sum of `strategy.train()` calls, after imports and data loading. "
        "**(c) raw PyTorch**: `bench/raw_torch.py`, replay as a hand loop that indexes whole tensors "
        "(same arrays, model, seeds and minibatch sizes, an experience-balanced memory of the same size). "
        "**(d) uploaded program**: as (a), with the model registered from a `.pt2` (`torch.export`) copy of "
        "`simple_mlp` holding the weights (a) starts from (`POST /api/models/` with the file only); the worker "
        "trains the checked program graph (`modelfactory/program_module.py`), dropout switched by train()/eval().")
    rows = []
    for key, label in (("service", "(a) CLaaS: REST API + worker (runner's timer)"),
                       ("plain", "(b) plain Avalanche script"), ("raw", "(c) raw PyTorch loop (floor)"),
                       ("program", "(d) CLaaS, uploaded .pt2 copy of simple_mlp")):
        times = [r["train_time_s"] for r in runs[key]]
        rows.append([label, t[key], f"{t[key] / t['plain']:.2f}x", min(times), max(times), acc[key],
                     runs[key][-1].get("eval_time_s")])
    section.tables.append(Table(["contender", "train s (median)", "vs plain", "min s", "max s", "final accuracy",
                                 "evaluation s"], rows))
    svc = runs["service"][-1]
    section.notes.append(
        f"End to end, the service's last experiment took {svc['wall_time_s']:.2f} s inside the worker "
        f"(training, evaluation, checkpoints, MLflow run and models) and was seen completed by the client "
        f"{svc['seen_done_s']:.2f} s after `exec` (status polled every {POLL_S:.0f} s).")
    same = [a["final_accuracy"] == b["final_accuracy"] for a, b in zip(runs["service"], runs["plain"])]
    section.notes.append(
        "Final accuracy of (a) and (b) identical in every round: " + ("yes" if all(same) else
                                                                       f"no ({sum(same)} of {len(same)})")
        + "; (c) draws its minibatches and memory differently, so its accuracy is comparable, not equal.")
    section.targets = [
        Target("training time, service over plain Avalanche", f"{ratio:.2f}x", f"<= {TARGET_TIME_RATIO:.2f}x",
               ratio <= TARGET_TIME_RATIO),
        Target("final accuracy, |service - plain|", f"{diff:.4f}", f"<= {TARGET_ACCURACY}", diff <= TARGET_ACCURACY),
        Target("training time, uploaded program over the zoo model (d/a)", f"{program_ratio:.2f}x",
               f"<= {TARGET_PROGRAM_RATIO:.2f}x", program_ratio <= TARGET_PROGRAM_RATIO),
        Target("final accuracy, |program - zoo model|", f"{program_diff:.4f}", f"<= {TARGET_ACCURACY}",
               program_diff <= TARGET_ACCURACY),
    ]
    section.data = {"runs": runs, "epochs": epochs}
    return section
