"""Benchmark 2 on a GPU: `simple_cnn` on a CIFAR-shaped synthetic stream, the service's runner (REST API
and a worker) against the plain Avalanche script and a raw PyTorch loop, side by side; prints a
Markdown table with the card's name.

    .venv/bin/python -m bench.gpu_overhead                    # on a machine with CUDA
    .venv/bin/python -m bench.gpu_overhead --device cpu --quick   # the same script, small, on a CPU
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import SERVICE_ENV, SERVICE_USER, median, run_json
from bench.service_overhead import run_service

DATASET = "synthetic-cifar"


def synthetic_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-shaped (3x32x32, 10 classes) images: per class a colour and a stripe orientation and
    frequency, under noise; learnable by a small CNN with global pooling."""
    rng = np.random.RandomState(seed)
    colours = rng.rand(10, 3, 1, 1).astype(np.float32)
    angles = rng.rand(10) * np.pi
    freqs = 2 + rng.rand(10) * 4
    rows, cols = np.mgrid[0:32, 0:32] / 32.0
    stripes = np.stack([np.sin(2 * np.pi * f * (cols * np.cos(a) + rows * np.sin(a))) for a, f in zip(angles, freqs)])
    means = 0.5 * colours + 0.25 * (1 + stripes[:, None, :, :]) * colours
    y = np.arange(n) % 10
    rng.shuffle(y)
    x = 0.7 * means[y] + 0.3 * rng.rand(n, 3, 32, 32).astype(np.float32)
    return x.astype(np.float16), y.astype(np.int64)  # float16 halves the upload; CLaaS stores float32


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small stream, one round, few epochs")
    parser.add_argument("--samples", type=int, default=0, help="images in the stream (default 10000; quick 1000)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs per experience (default 10; quick 1)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds of the three contenders (default 2)")
    parser.add_argument("--train-mb", type=int, default=64)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--out", default="", help="also write the Markdown here")
    return parser.parse_args(argv)


def experiment(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {
        "exp_name": name,
        "model": {"architecture": "simple_cnn", "params": {"input_shape": [3, 32, 32], "channels": args.channels}},
        "benchmark": {"name": "dataset", "dataset": DATASET, "scenario": "class_incremental", "n_experiences": 5,
                      "seed": 1, "test_size": 0.2},
        "strategy": {"name": "replay", "params": {"mem_size": 200}},
        "training": {"epochs": args.epochs, "train_mb_size": args.train_mb, "eval_mb_size": 256,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "device": args.device, "seed": 0,
                     "deterministic": True},
    }


def script_args(args: argparse.Namespace, npz: Path) -> list[str]:
    return ["--data", str(npz), "--n-experiences", "5", "--stream-seed", "1", "--test-size", "0.2",
            "--arch", "simple_cnn", "--input-shape", "3,32,32", "--channels", str(args.channels),
            "--mem-size", "200", "--epochs", str(args.epochs), "--train-mb", str(args.train_mb), "--eval-mb", "256",
            "--lr", "0.05", "--momentum", "0.9", "--device", args.device, "--seed", "0", "--deterministic"]


def same_threads(runs: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The scripts get the compute threads the service's worker trained with (the service runs first in
    every round), as benchmark 2 does (`bench/service_overhead.py`)."""
    threads = runs["service"][0].get("torch_threads") if runs["service"] else None
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


def markdown(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]], card: str, setup_s: float) -> str:
    t = {k: median([r["train_time_s"] for r in v]) for k, v in runs.items()}
    threads = runs["service"][0].get("torch_threads")
    threads_text = f"{threads} torch compute thread(s)" if threads else "torch's default compute threads"
    acc = {k: v[-1]["final_accuracy"] for k, v in runs.items()}
    import platform
    from datetime import datetime, timezone

    import torch

    lines = [
        f"### Service overhead on {card}",
        "",
        f"- **Command:** `python -m bench.gpu_overhead {' '.join(sys.argv[1:])}`".replace("  ", " ").rstrip()
        + " (on a lent GPU machine: `bash bench/gpu_device.sh`)",
        f"- **Date:** {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- **Machine:** {card}, {os.cpu_count()} CPU cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "",
        f"`simple_cnn` (channels {args.channels}) on a CIFAR-shaped synthetic stream ({args.samples} images "
        f"3x32x32, 10 classes, 5 class-incremental experiences, uploaded as NPZ), `replay` (memory 200), "
        f"{args.epochs} epochs, minibatch {args.train_mb}, SGD lr 0.05 momentum 0.9, seed 0, `device: "
        f"{args.device}`, deterministic kernels on every side (`training.deterministic: true` for the service, "
        f"`torch.use_deterministic_algorithms` and cuDNN's deterministic mode for the scripts), {threads_text} "
        "in every contender (what the worker trained with; the scripts get the same through `OMP_NUM_THREADS` and `MKL_NUM_THREADS`); "
        f"{len(runs['service'])} round(s), medians. Training time: the runner's timer for the "
        "service, the same sum of `strategy.train()` calls for the scripts. Service start and upload took "
        f"{setup_s:.0f} s (not counted).",
        "",
        "| contender | train s (median) | vs plain | final accuracy (last round) | final accuracy, every round |",
        "|---|---|---|---|---|",
    ]
    labels = {"service": "(a) CLaaS: REST API + worker (runner's timer)", "plain": "(b) plain Avalanche script",
              "raw": "(c) raw PyTorch loop (floor)"}
    for key, label in labels.items():
        every = " / ".join(f"{r['final_accuracy']:.4f}" for r in runs[key])
        lines.append(f"| {label} | {t[key]:.2f} | {t[key] / t['plain']:.2f}x | {acc[key]:.4f} | {every} |")
    ratio, diff = t["service"] / t["plain"], abs(acc["service"] - acc["plain"])
    lines += ["", f"Service over plain: **{ratio:.2f}x** (target <= 1.10x: {'met' if ratio <= 1.10 else 'missed'}); "
                  f"|accuracy difference| **{diff:.4f}** (target <= 0.01: {'met' if diff <= 0.01 else 'missed'})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    args.samples = args.samples or (1000 if args.quick else 10_000)
    args.epochs = args.epochs or (1 if args.quick else 10)
    args.rounds = args.rounds or (1 if args.quick else 2)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA device here; run with --device cpu to try the script on a CPU.", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "the CPU"

    from tests.service import LiveService

    workdir = Path(tempfile.mkdtemp(prefix="claas-bench-gpu-"))
    began = time.perf_counter()
    print(f"starting the service in {workdir}", flush=True)
    live = LiveService(workdir / "service", env=SERVICE_ENV)
    try:
        live.start()
        client = live.user(SERVICE_USER)
        x, y = synthetic_cifar(args.samples)
        npz = workdir / "synthetic-cifar.npz"
        np.savez(npz, x=x, y=y)
        buffer = io.BytesIO(npz.read_bytes())
        response = client.post("/api/datasets/", data={"name": DATASET}, json=None,
                               files={"file": ("synthetic-cifar.npz", buffer, "application/octet-stream")},
                               timeout=600)
        if response.status_code != 201:
            raise RuntimeError(f"dataset upload answered {response.status_code}: {response.text[:300]}")
        setup_s = time.perf_counter() - began
        runs: dict[str, list[dict[str, Any]]] = {"service": [], "plain": [], "raw": []}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}: service", flush=True)
            runs["service"].append(run_service(client, experiment(args, f"gpu-overhead-{rnd}")))
            print(f"  the worker trained with {runs['service'][-1].get('torch_threads')} torch thread(s); the scripts "
                  f"get {same_threads(runs) or 'no thread setting'}", flush=True)
            print(f"round {rnd + 1}/{args.rounds}: plain Avalanche", flush=True)
            runs["plain"].append(run_json("bench.plain_avalanche", script_args(args, npz), timeout=900,
                                          env=same_threads(runs)))
            print(f"round {rnd + 1}/{args.rounds}: raw PyTorch", flush=True)
            runs["raw"].append(run_json("bench.raw_torch", script_args(args, npz), timeout=900,
                                        env=same_threads(runs)))
            print("  train s: " + ", ".join(f"{k} {v[-1]['train_time_s']:.2f}" for k, v in runs.items()), flush=True)
    finally:
        live.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    text = markdown(args, runs, card, setup_s)
    print("\n" + text)
    print(json.dumps({"card": card, "runs": runs}))
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"\n(total {time.perf_counter() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
