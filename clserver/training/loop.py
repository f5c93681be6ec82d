"""The one training loop of experiments and deployment updates: device, strategy, batches, evaluation.

`strategy_build` makes the Avalanche strategy both paths train with (model, optimizer and strategy
from the registries, the device, tensor batches, no Avalanche metrics); what differs between an
experiment and an update is only which of `clserver.training.plugins` each one attaches.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from clserver.experiments.selectors import text_paths_hidden
from clserver.training.plugins import plugins_attach
from clserver.training.streams import Stream
from clserver.training.strategies import OPTIMIZERS, STRATEGIES
from clserver.training.tensor_batches import TensorBatchesPlugin

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"This worker has no CUDA device for training.device '{device}'.")
    return torch.device(device)


@contextlib.contextmanager
def server_paths_hidden() -> Iterator[None]:
    """A job's error becomes a message users read: paths in it are given relative to the data dir."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        hidden = text_paths_hidden(text)
        if hidden == text:
            raise
        raise RuntimeError(hidden) from exc


@contextlib.contextmanager
def kernels_deterministic(enabled: bool) -> Iterator[None]:
    """`training.deterministic`: deterministic cuDNN and cuBLAS kernels and no cuDNN autotuning, so
    that a seeded run on a GPU repeats exactly (CPU kernels are deterministic already). torch keeps
    these flags per process, so they are put back afterwards for the worker's next job. cuBLAS also
    needs CUBLAS_WORKSPACE_CONFIG, which every worker sets at start-up (clserver/jobs/tasks.py)."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)  # an op with no deterministic kernel warns
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def tensor_dataset(x: np.ndarray, y: np.ndarray) -> Any:
    """An Avalanche dataset straight from arrays: no per-sample transforms or file reads."""
    return _make_taskaware_tensor_classification_dataset(torch.from_numpy(np.ascontiguousarray(x)),
                                                         torch.from_numpy(np.ascontiguousarray(y)))


def stream_to_avalanche(stream: Stream) -> Any:
    """The stream as an Avalanche benchmark of tensor datasets."""
    return benchmark_from_datasets(train=[tensor_dataset(*p) for p in stream.train],
                                   test=[tensor_dataset(*p) for p in stream.test])


def evaluate(model: nn.Module, stream: Stream, device: torch.device, batch: int) -> list[float]:
    """Accuracy on each experience's test data (the model goes to `device` first: before the first
    training, which is when the strategy moves it, it is still where it was built)."""
    was_training = model.training
    model.to(device)
    model.eval()
    row = []
    with torch.no_grad():
        for x, y in stream.test:
            correct = 0
            for start in range(0, len(y), batch):
                xb = torch.from_numpy(x[start:start + batch]).to(device)
                pred = model(xb).argmax(dim=1).cpu().numpy()
                correct += int((pred == y[start:start + batch]).sum())
            row.append(correct / len(y) if len(y) else 0.0)
    model.train(was_training)
    return row


def strategy_build(*, model: nn.Module, options: dict[str, Any], device: torch.device,
                   plugins: Sequence[SupervisedPlugin] = ()) -> Any:
    """The Avalanche strategy of `options` (`strategy`, `training`) around `model`, training on `device`
    from tensor batches, with `plugins` (see `plugins.plugins_attach`) attached."""
    training = options["training"]
    opt = dict(training["optimizer"])
    optimizer = OPTIMIZERS.get(opt.pop("name"), "training.optimizer.name").builder(model.parameters(), **opt)
    common = {
        "train_mb_size": training["train_mb_size"], "train_epochs": training["epochs"],
        "eval_mb_size": training["eval_mb_size"], "device": device,
        # Tensor batches come after any plugin that builds the loader (replay's); same batches, faster.
        "plugins": [TensorBatchesPlugin()],
        "evaluator": EvaluationPlugin(loggers=[]),
    }
    entry = STRATEGIES.get(options["strategy"]["name"], "strategy.name")
    strategy = entry.builder(model, optimizer, nn.CrossEntropyLoss(), common, **options["strategy"]["params"])
    plugins_attach(strategy, plugins)
    return strategy
