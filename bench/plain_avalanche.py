"""The plain Avalanche script of benchmark 2: what a data scientist writes for the same experiment.

Same arrays (the split and class order of CLaaS's `split_digits`, or of an NPZ file cut like the
`dataset` benchmark's `class_incremental` scenario), same model, seeds, optimizer and minibatches
as the service; from there on plain Avalanche: tensor datasets, `benchmark_from_datasets`,
`Naive` with a `ReplayPlugin`, an `EvaluationPlugin` with accuracy metrics and `strategy.eval`.
Imports happen before the clock starts; the printed JSON line holds the figures.

    python -m bench.plain_avalanche --epochs 10 --device cpu
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SimpleMLP
from avalanche.training import Naive
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from torch import nn

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="No loggers specified")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="'digits' or the path of an NPZ with x, y")
    parser.add_argument("--n-experiences", type=int, default=5)
    parser.add_argument("--stream-seed", type=int, default=1)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--arch", default="simple_mlp", choices=("simple_mlp", "simple_cnn"))
    parser.add_argument("--input-shape", default="64", help="comma-separated, e.g. 3,32,32")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--mem-size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train-mb", type=int, default=32)
    parser.add_argument("--eval-mb", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic GPU kernels, as the service's training.deterministic")
    return parser.parse_args(argv)


def deterministic_setup(args: argparse.Namespace) -> None:
    """What torch's reproducibility notes ask for, as the service does for `training.deterministic`."""
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False


def stream_arrays(args: argparse.Namespace) -> Any:
    """The experiment's stream as arrays, cut exactly as the service cuts it (numpy only)."""
    from clserver.training import streams

    if args.data == "digits":
        x, y = streams.load_digits_arrays()
    else:
        with np.load(args.data, allow_pickle=False) as data:
            x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
        x = x.reshape(len(x), -1)
    shape = [int(v) for v in args.input_shape.split(",")]
    return streams.class_incremental(x, y, n_experiences=args.n_experiences, seed=args.stream_seed,
                                     test_size=args.test_size, input_shape=shape, name="plain")


class SimpleCNN(nn.Module):
    """CLaaS's `simple_cnn` written out (same layers in the same order, so the same initial weights)."""

    def __init__(self, num_classes: int, input_shape: list[int], channels: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.reshape(x.shape[0], *self.input_shape)))


def build_model(args: argparse.Namespace, n_classes: int) -> nn.Module:
    shape = [int(v) for v in args.input_shape.split(",")]
    if args.arch == "simple_cnn":
        return SimpleCNN(n_classes, shape, args.channels)
    return SimpleMLP(num_classes=n_classes, input_size=math.prod(shape), hidden_size=args.hidden_size,
                     hidden_layers=1, drop_rate=0.5)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    deterministic_setup(args)
    stream = stream_arrays(args)
    device = torch.device(args.device)

    def dataset(x: np.ndarray, y: np.ndarray) -> Any:
        return _make_taskaware_tensor_classification_dataset(torch.from_numpy(x), torch.from_numpy(y))

    benchmark = benchmark_from_datasets(train=[dataset(*p) for p in stream.train],
                                        test=[dataset(*p) for p in stream.test])
    # Seeded as the service seeds: before the model is built and again before training.
    RNGManager.set_random_seeds(args.seed)
    model = build_model(args, stream.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    strategy = Naive(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                     train_mb_size=args.train_mb, train_epochs=args.epochs, eval_mb_size=args.eval_mb,
                     device=device, plugins=[ReplayPlugin(mem_size=args.mem_size)], evaluator=evaluator)
    RNGManager.set_random_seeds(args.seed)

    train_times, eval_times, row = [], [], []
    started = time.perf_counter()
    for experience in benchmark.train_stream:
        t0 = time.perf_counter()
        strategy.train(experience)
        train_times.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        # Avalanche's evaluation draws from the global RNG (each DataLoader takes a seed); forking it
        # keeps the training's random stream the same as the service's, whose evaluation draws nothing.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            results = strategy.eval(benchmark.test_stream)
        eval_times.append(time.perf_counter() - t1)
        row = [float(results[f"Top1_Acc_Exp/eval_phase/test_stream/Exp{j:03d}"])
               for j in range(len(stream.test))]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"train_time_s": sum(train_times), "eval_time_s": sum(eval_times),
            "wall_time_s": time.perf_counter() - started, "per_experience_train_s": train_times,
            "final_accuracy": float(np.mean(row)), "accuracy_row": row,
            "device": str(device), "cuda_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


if __name__ == "__main__":
    print(json.dumps(main()))
