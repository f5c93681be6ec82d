"""Minibatches from gathered tensors train exactly the model Avalanche's own loaders train."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from torch import nn
from torchvision import transforms

from clserver.training.strategies import OPTIMIZERS, STRATEGIES
from clserver.training.streams import class_incremental, load_digits_arrays
from clserver.training.tensor_batches import TensorBatchesPlugin, tensor_loader, transform_free
from modelfactory.architectures import architecture_build, architecture_params


def _strategy_names() -> list[str]:
    """Strategies that train one model experience by experience (the runner's case)."""
    return [e["name"] for e in STRATEGIES.describe() if not STRATEGIES.get(e["name"], "strategy").extra.get("offline")]


@pytest.fixture(scope="module")
def stream():
    x, y = load_digits_arrays()
    keep = np.random.RandomState(0).permutation(len(y))[:400]
    return class_incremental(x[keep], y[keep], n_experiences=2, seed=1, test_size=0.2, input_shape=[64],
                             name="tiny")


def _datasets(stream, transform=None):
    out = []
    for x, y in stream.train:
        data = _make_taskaware_tensor_classification_dataset(torch.from_numpy(x), torch.from_numpy(y))
        out.append(data.replace_current_transform_group(transform) if transform else data)
    return out


def train(stream, name: str, fast: bool, transform=None, epochs: int = 2) -> tuple[list[torch.Tensor], Any]:
    """Train a small model on the stream with a registry strategy; its final weights and the plugin
    (which counts how often the tensor batches were used)."""
    entry = STRATEGIES.get(name, "strategy")
    RNGManager.set_random_seeds(0)
    params = architecture_params(architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64],
                                                                   "hidden_size": 32})
    model = architecture_build(architecture="simple_mlp", params=params)
    optimizer = OPTIMIZERS.get("sgd", "optimizer").builder(model.parameters(), lr=0.05, momentum=0.9,
                                                           weight_decay=0.0)
    plugin = TensorBatchesPlugin()
    common = {"train_mb_size": 16, "train_epochs": epochs, "eval_mb_size": 64, "device": torch.device("cpu"),
              "plugins": [plugin] if fast else [], "evaluator": EvaluationPlugin(loggers=[])}
    strategy = entry.builder(model, optimizer, nn.CrossEntropyLoss(), common, **entry.validate({}, "strategy"))
    data = _datasets(stream, transform)
    scenario = benchmark_from_datasets(train=data, test=data)
    RNGManager.set_random_seeds(0)
    for experience in scenario.train_stream:
        strategy.train(experience, eval_streams=[])
    return [p.detach().clone() for p in strategy.model.state_dict().values()], plugin


@pytest.mark.parametrize("name", _strategy_names())
def test_every_strategy_trains_the_same_model_from_tensor_batches(stream, name):
    slow, _ = train(stream, name, fast=False)
    fast, plugin = train(stream, name, fast=True)
    assert plugin.used == 2
    assert len(slow) == len(fast) and all(torch.equal(a, b) for a, b in zip(slow, fast))


@pytest.mark.parametrize("name", ["der", "er_ace"])
def test_memory_minibatches_of_der_and_er_ace_come_from_tensors_and_train_the_same(stream, name):
    """These strategies draw a memory minibatch from a loader of their own at every step; from the
    second experience on it is served from gathered tensors too, with the same batches."""
    slow, _ = train(stream, name, fast=False)
    fast, plugin = train(stream, name, fast=True)
    assert plugin.memory_used == 1  # the first experience has no memory yet
    assert all(torch.equal(a, b) for a, b in zip(slow, fast))


def test_replay_batches_hold_the_memory_and_new_data_like_avalanche(stream):
    """The stand-in yields, batch for batch, what the replay loader yields (same RNG state before each)."""
    from avalanche.benchmarks.utils.data_loader import ReplayDataLoader

    data, memory = _datasets(stream)
    loader = ReplayDataLoader(data, memory.subset(range(50)), oversample_small_tasks=True, batch_size=16,
                              batch_size_mem=16, shuffle=True)
    fast = tensor_loader(loader)
    assert fast is not None and len(fast) == len(loader)
    torch.manual_seed(3)
    expected = [[t.clone() for t in batch] for batch in loader]
    torch.manual_seed(3)
    got = list(fast)
    assert len(got) == len(expected) and all(len(b) == 3 for b in got)
    assert all(torch.equal(a, b) for be, bg in zip(expected, got) for a, b in zip(be, bg))
    assert all(len(b[0]) > 16 for b in got[:-1])  # 16 new samples, and memory samples beside them


def test_datasets_with_a_transform_keep_avalanches_loader_and_train_the_same(stream):
    double = transforms.Lambda(lambda x: x * 2)
    assert transform_free(_datasets(stream)[0]) and not transform_free(_datasets(stream, double)[0])
    slow, _ = train(stream, "naive", fast=False, transform=double)
    fast, plugin = train(stream, "naive", fast=True, transform=double)
    assert plugin.used == 0
    assert all(torch.equal(a, b) for a, b in zip(slow, fast))


def test_the_gathered_copy_is_dropped_after_each_experience(stream):
    entry = STRATEGIES.get("replay", "strategy")
    model = architecture_build(architecture="simple_mlp", params=architecture_params(
        architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 8}))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    plugin = TensorBatchesPlugin()
    strategy = entry.builder(model, optimizer, nn.CrossEntropyLoss(), {
        "train_mb_size": 16, "train_epochs": 1, "eval_mb_size": 64, "device": torch.device("cpu"),
        "plugins": [plugin], "evaluator": EvaluationPlugin(loggers=[])}, **entry.validate({}, "strategy"))
    data = _datasets(stream)
    strategy.train(benchmark_from_datasets(train=data, test=data).train_stream[0], eval_streams=[])
    assert plugin.used == 1 and type(strategy.dataloader).__name__ != "TensorBatchLoader"


def _der_memory(stream, mem_size: int, n_experiences: int = 4):
    """DER's replay memory (labels, task labels and stored logits of class-balanced subsets of several
    experiences) after a short training on a permuted stream."""
    from clserver.training.runner import stream_to_avalanche
    from clserver.training.streams import permuted

    x, y = load_digits_arrays()
    keep = np.random.RandomState(1).permutation(len(y))[:600]
    perm = permuted(x[keep], y[keep], n_experiences=n_experiences, seed=1, test_size=0.2, input_shape=[64],
                    name="perm")
    entry = STRATEGIES.get("der", "strategy")
    RNGManager.set_random_seeds(0)
    model = architecture_build(architecture="simple_mlp", params=architecture_params(
        architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 16}))
    strategy = entry.builder(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), {
        "train_mb_size": 16, "train_epochs": 1, "eval_mb_size": 64, "device": torch.device("cpu"),
        "plugins": [TensorBatchesPlugin()], "evaluator": EvaluationPlugin(loggers=[])},
        **entry.validate({"mem_size": mem_size, "batch_size_mem": 16}, "strategy"))
    for experience in stream_to_avalanche(perm).train_stream:
        strategy.train(experience, eval_streams=[])
    return strategy.storage_policy.buffer


@pytest.mark.parametrize("mem_size", [50, 700])
def test_der_memory_is_gathered_in_bulk_into_the_tensors_sample_by_sample_collation_gives(stream, mem_size):
    """The memory is gathered by index arrays, not by a call per sample, and the tensors are those the
    per-sample path gives: the same dtypes, the same bits, in the same order."""
    from torch.utils.data import default_collate

    from clserver.training.tensor_batches import bulk_columns, gather

    buffer = _der_memory(stream, mem_size)
    assert len(buffer) == min(mem_size, 4 * 480)
    expected = default_collate([buffer[i] for i in range(len(buffer))])
    bulk = bulk_columns(buffer, default_collate)
    assert bulk is not None and len(bulk) == len(expected) == 4  # inputs, labels, task labels, logits
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(bulk, expected))
    assert all(torch.equal(a, b) for a, b in zip(gather([buffer], default_collate), expected))


def test_replay_memory_concatenated_from_subsets_is_gathered_in_bulk_the_same(stream):
    """Avalanche's replay memories are concatenations of subsets of several experiences' datasets."""
    from torch.utils.data import default_collate

    from clserver.training.tensor_batches import bulk_columns

    first, second = _datasets(stream)
    memory = first.subset([5, 3, 90, 7]).concat(second.subset(range(40, 10, -3))).concat(first.subset([0, 1]))
    memory = memory.subset([12, 0, 3, 1, 15, 2, 11])
    expected = default_collate([memory[i] for i in range(len(memory))])
    bulk = bulk_columns(memory, default_collate)
    assert bulk is not None
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(bulk, expected))


def test_datasets_of_other_kinds_are_gathered_sample_by_sample(stream):
    """A dataset whose samples come from code of its own is not indexed in bulk: gather asks it per sample."""
    from torch.utils.data import Dataset, default_collate

    from avalanche.benchmarks.utils import AvalancheDataset
    from clserver.training.tensor_batches import bulk_columns, gather

    class Squares(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.tensor([float(i * i)]), i

    data = AvalancheDataset([Squares()])
    assert bulk_columns(data, default_collate) is None
    x, y = gather([data], default_collate)
    assert x.flatten().tolist() == [0.0, 1.0, 4.0, 9.0, 16.0, 25.0] and y.tolist() == list(range(6))
