"""Benchmark 1: a stateful replay update (DER) against cumulative retraining from scratch, update by update.

Both arms run in this process through CLaaS's own pieces: streams from the benchmark registry
(the uploaded stream goes through the dataset upload service), strategies and optimizers from
their registries, Avalanche tensor datasets and tensor batches as the runner uses them, the
runner's held-out split and early stopping, and the runner's evaluation. Only `strategy.train()`
is timed, as the runner's own timer does. The protocol is fair by construction: both arms stop
early by the same rule on the same held-out data, and every figure is the median of repetitions
with different seeds.
"""
from __future__ import annotations

import io
import statistics
import time
from typing import Any

import numpy as np

from bench.harness import Context
from bench.report import Section

from bench.update_cost_config import (  # noqa: F401  (the settings, shared with the report)
    DRIFT_DATASET,
    EVAL_MB,
    FULL,
    MAX_EPOCHS,
    MEMORY,
    MODEL,
    OPTIMIZER,
    QUICK,
    RULE,
    SEEDS,
    STRATEGY,
    TARGETS,
    THREADS,
    TRAIN_MB,
    Config,
    stream_strategy,
    _sum,
)


def stopping_rule() -> dict[str, Any]:
    """`training.early_stopping` as a user who sets it to `RULE` gets it: the product's defaults but `RULE`."""
    from clserver.training.early_stopping_options import EARLY_STOPPING_PARAMS

    return {**{p.name: p.default for p in EARLY_STOPPING_PARAMS}, "enabled": True, **RULE}


def drifting_digits(copies: int, seed: int = 0, max_angle: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Digits in a random order whose rotation grows slowly from 0 to `max_angle` degrees over the rows."""
    from clserver.training.streams import load_digits_arrays, rotate_images

    x, y = load_digits_arrays()
    rng = np.random.RandomState(seed)
    order = np.concatenate([rng.permutation(len(y)) for _ in range(copies)])
    x, y = x[order], y[order]
    out = np.empty_like(x)
    steps = 60  # the angle moves in small steps: a slow drift, not jumps
    for chunk, angle in zip(np.array_split(np.arange(len(y)), steps), np.linspace(0.0, max_angle, steps)):
        out[chunk] = rotate_images(x[chunk].reshape(-1, 8, 8), float(angle)).reshape(len(chunk), 64)
    return out, y


def upload_drifting_dataset(copies: int) -> Any:
    """Store the drifting stream through the dataset upload service, as a user's NPZ upload would be."""
    from django.contrib.auth import get_user_model
    from django.core.files.uploadedfile import SimpleUploadedFile

    from clserver.datasets.services import dataset_create
    from clserver.models import Dataset

    owner, _ = get_user_model().objects.get_or_create(username="bench")
    Dataset.objects.filter(owner=owner, name=DRIFT_DATASET).delete()
    x, y = drifting_digits(copies)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    dataset_create(owner=owner, name=DRIFT_DATASET,
                   file=SimpleUploadedFile("drifting-digits.npz", buffer.getvalue()))
    return owner


def load_stream(name: str, params: dict[str, Any], owner: Any) -> Any:
    from clserver.training.benchmarks import benchmark_source

    _, source = benchmark_source(name=name, params=params, owner=owner)
    return source.load()


class _Counter:
    """Samples through the model in training (memory samples included), per `train()` call."""

    def __new__(cls) -> Any:
        from avalanche.core import SupervisedPlugin

        class Counter(SupervisedPlugin):
            def __init__(self) -> None:
                super().__init__()
                self.samples = 0

            def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
                self.samples = 0

            def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
                self.samples += len(strategy.mb_y)

        return Counter()


def _strategy(spec: dict[str, Any], stream: Any, epochs: int, plugins: list[Any]) -> Any:
    """Model, optimizer and strategy from CLaaS's registries, with the registries' defaults."""
    import torch
    from avalanche.training.plugins import EvaluationPlugin
    from torch import nn

    from clserver.training.strategies import OPTIMIZERS, STRATEGIES
    from clserver.training.tensor_batches import TensorBatchesPlugin
    from modelfactory.architectures import architecture_build, architecture_params

    model_params = architecture_params(architecture=MODEL["architecture"], params={
        "num_classes": stream.n_classes, "input_shape": stream.input_shape, **MODEL["params"]})
    model = architecture_build(architecture=MODEL["architecture"], params=model_params)
    entry = OPTIMIZERS.get(OPTIMIZER["name"], "optimizer")
    opt = entry.validate({k: v for k, v in OPTIMIZER.items() if k != "name"}, "optimizer")
    optimizer = entry.builder(model.parameters(), **opt)
    common = {"train_mb_size": TRAIN_MB, "train_epochs": epochs, "eval_mb_size": EVAL_MB,
              "device": torch.device("cpu"), "plugins": [*plugins, TensorBatchesPlugin()],
              "evaluator": EvaluationPlugin(loggers=[])}
    entry = STRATEGIES.get(spec["name"], "strategy")
    return entry.builder(model, optimizer, nn.CrossEntropyLoss(), common, **entry.validate(spec["params"], "strategy"))


def _accuracy_so_far(model: Any, stream: Any, upto: int) -> float:
    """Mean test accuracy over the experiences seen so far (the runner's evaluation)."""
    import torch

    from clserver.training.runner import evaluate

    row = evaluate(model, stream, torch.device("cpu"), EVAL_MB)
    return float(np.mean(row[:upto + 1]))


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="No loggers specified")
    # Avalanche resets the DeprecationWarning filter on every call of a deprecated function: drop them here.
    shown = warnings.showwarning

    def show(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, DeprecationWarning):
            shown(message, category, *args, **kwargs)

    warnings.showwarning = show


class _Arm:
    """What both arms share: the held-out split of a seed, the stopping plugin, the timed `train()`."""

    def __init__(self, stream: Any, seed: int, rule: dict[str, Any]) -> None:
        from clserver.training.early_stopping import EarlyStoppingPlugin, stream_held_out

        self.full, self.seed = stream, seed
        # As the runner does: each experience trains on what is not held out of it (the same split in both arms).
        self.stream, self.held = stream_held_out(stream=stream, fraction=rule["validation_fraction"], seed=seed)
        self.stopping = EarlyStoppingPlugin(options=rule, batch=EVAL_MB)
        self.counter = _Counter()

    def step(self, strategy: Any, experience: Any, i: int) -> dict[str, Any]:
        # It stops on the held-out part of every experience so far, as the runner's does.
        parts = self.held[:i + 1]
        self.stopping.held_out = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        started = time.perf_counter()
        strategy.train(experience, eval_streams=[])
        elapsed = time.perf_counter() - started
        return {"time_s": elapsed, "samples": self.counter.samples, "epochs": self.stopping.epochs_trained,
                "accuracy": _accuracy_so_far(strategy.model, self.full, i)}


def stateful_arm(stream: Any, seed: int, rule: dict[str, Any], epochs: int,
                 spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One model, updated experience by experience with a strategy (`spec`; default: the benchmark's DER
    with its memory capped at the stream's training samples, as the API caps it)."""
    spec = spec or stream_strategy(sum(len(y) for _, y in stream.train))
    from avalanche.training.determinism.rng_manager import RNGManager

    from clserver.training.runner import stream_to_avalanche

    arm = _Arm(stream, seed, rule)
    RNGManager.set_random_seeds(seed)
    strategy = _strategy(spec, arm.stream, epochs, [arm.counter, arm.stopping])
    scenario = stream_to_avalanche(arm.stream)
    RNGManager.set_random_seeds(seed)
    return [arm.step(strategy, scenario.train_stream[i], i) for i in range(stream.n_experiences)]


def cumulative_arm(stream: Any, seed: int, rule: dict[str, Any], epochs: int) -> list[dict[str, Any]]:
    """At every experience a fresh model trained from scratch on all the training data so far."""
    import torch
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
    from avalanche.training.determinism.rng_manager import RNGManager

    arm = _Arm(stream, seed, rule)
    steps = []
    for i in range(stream.n_experiences):
        RNGManager.set_random_seeds(seed)  # the same initial weights as the stateful model
        strategy = _strategy({"name": "naive", "params": {}}, arm.stream, epochs, [arm.counter, arm.stopping])
        x = np.concatenate([arm.stream.train[j][0] for j in range(i + 1)])
        y = np.concatenate([arm.stream.train[j][1] for j in range(i + 1)])
        data = _make_taskaware_tensor_classification_dataset(torch.from_numpy(x), torch.from_numpy(y))
        experience = benchmark_from_datasets(train=[data], test=[data]).train_stream[0]
        RNGManager.set_random_seeds(seed)
        steps.append(arm.step(strategy, experience, i))
    return steps


def warm_up(stream: Any, rule: dict[str, Any]) -> None:
    """One short untimed training first, so that neither arm pays the process's first-call costs."""
    from clserver.training.runner import stream_to_avalanche

    arm = _Arm(stream, SEEDS[0], rule)
    strategy = _strategy(STRATEGY, arm.stream, 1, [arm.counter, arm.stopping])
    scenario = stream_to_avalanche(arm.stream)
    for i in range(min(2, stream.n_experiences)):  # the second one with a memory
        arm.step(strategy, scenario.train_stream[i], i)


def repetition(stream: Any, seed: int, rule: dict[str, Any], epochs: int) -> dict[str, Any]:
    stateful = stateful_arm(stream, seed, rule, epochs)
    cumulative = cumulative_arm(stream, seed, rule, epochs)
    s, c = stateful[-1], cumulative[-1]
    return {
        "seed": seed, "stateful": stateful, "cumulative": cumulative,
        "last_time_ratio": c["time_s"] / s["time_s"], "last_samples_ratio": c["samples"] / s["samples"],
        "total_time_ratio": _sum(cumulative, "time_s") / _sum(stateful, "time_s"),
        "total_samples_ratio": _sum(cumulative, "samples") / _sum(stateful, "samples"),
        "last_epochs": (s["epochs"], c["epochs"]),
        "mean_epochs": (_sum(stateful, "epochs") / len(stateful), _sum(cumulative, "epochs") / len(cumulative)),
        "accuracy": (s["accuracy"], c["accuracy"]), "gap": c["accuracy"] - s["accuracy"],
    }


def compare(name: str, stream: Any, config: Config, rule: dict[str, Any], ctx: Context,
            seeds: tuple[int, ...]) -> dict[str, Any]:
    reps = []
    for seed in seeds:
        rep = repetition(stream, seed, rule, config.max_epochs)
        reps.append(rep)
        ctx.say(f"{name}, seed {seed}: last update {rep['last_time_ratio']:.1f}x cheaper in time "
                f"({rep['last_samples_ratio']:.1f}x in samples; epochs {rep['last_epochs'][0]} against "
                f"{rep['last_epochs'][1]}), whole stream {rep['total_time_ratio']:.1f}x; final accuracy "
                f"{rep['accuracy'][0]:.3f} against {rep['accuracy'][1]:.3f}")

    def med(key: str, i: int | None = None) -> float:
        return statistics.median(r[key] if i is None else r[key][i] for r in reps)

    def span(key: str, i: int | None = None) -> tuple[float, float]:
        values = [r[key] if i is None else r[key][i] for r in reps]
        return min(values), max(values)

    summary = {k: med(k) for k in ("last_time_ratio", "last_samples_ratio", "total_time_ratio",
                                   "total_samples_ratio", "gap")}
    summary.update({f"{k}_range": span(k) for k in ("last_time_ratio", "total_time_ratio", "gap")})
    summary.update({"accuracy": (med("accuracy", 0), med("accuracy", 1)),
                    "accuracy_range": (span("accuracy", 0), span("accuracy", 1)),
                    "last_epochs": (med("last_epochs", 0), med("last_epochs", 1)),
                    "mean_epochs": (med("mean_epochs", 0), med("mean_epochs", 1))})
    return {"name": name, "n_experiences": stream.n_experiences,
            "train_samples_per_experience": [int(len(t[1])) for t in stream.train], "repetitions": reps, **summary}




def run(ctx: Context) -> Section:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(threads)


def _run(ctx: Context) -> Section:
    config = QUICK if ctx.quick else FULL
    ctx.django()
    _quiet()
    rule = stopping_rule()
    owner = upload_drifting_dataset(config.copies)
    streams = [
        ("permuted", f"permuted_digits, {config.permuted_experiences} experiences",
         load_stream("permuted_digits", {"n_experiences": config.permuted_experiences, "seed": 1}, owner),
         config.seeds),
        ("uploaded", f"uploaded drifting digits (time_ordered), {config.ordered_experiences} experiences",
         load_stream("dataset", {"dataset": DRIFT_DATASET, "scenario": "time_ordered",
                                 "n_experiences": config.ordered_experiences, "seed": 1}, owner),
         config.ordered_seeds),
    ]
    warm_up(streams[0][2], rule)
    results = []
    for key, name, stream, seeds in streams:
        ctx.say(f"{name}: {len(seeds)} repetitions of {STRATEGY['name']} updates and cumulative retraining")
        results.append((key, compare(name, stream, config, rule, ctx, seeds)))
    from bench.update_cost_report import section

    return section(config, rule, results)
