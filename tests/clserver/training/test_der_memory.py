"""DER's memory held as tensors trains exactly the model Avalanche's own memory trains, and is cheaper."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.supervised.der import ClassBalancedBufferWithLogits
from torch import nn
from torch.utils.data import default_collate
from torchvision import transforms

from clserver.training.der_memory import TensorMemoryWithLogits
from clserver.training.loop import tensor_dataset
from clserver.training.strategies import STRATEGIES
from clserver.training.streams import load_digits_arrays, permuted
from clserver.training.tensor_batches import TensorBatchesPlugin
from modelfactory.architectures import architecture_build, architecture_params


@pytest.fixture(scope="module")
def stream():
    x, y = load_digits_arrays()
    keep = np.random.RandomState(1).permutation(len(y))[:600]
    return permuted(x[keep], y[keep], n_experiences=4, seed=1, test_size=0.2, input_shape=[64], name="perm")


def train(stream, *, avalanche_memory: bool, mem_size: int, transform=None, fast: bool = True):
    """A registry DER trained over the stream; with `avalanche_memory` its memory is Avalanche's class;
    `transform` applies from the second experience on."""
    entry = STRATEGIES.get("der", "strategy")
    RNGManager.set_random_seeds(0)
    model = architecture_build(architecture="simple_mlp", params=architecture_params(
        architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 16}))
    strategy = entry.builder(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                             nn.CrossEntropyLoss(), {
        "train_mb_size": 16, "train_epochs": 2, "eval_mb_size": 64, "device": torch.device("cpu"),
        "plugins": [TensorBatchesPlugin()] if fast else [], "evaluator": EvaluationPlugin(loggers=[])},
        **entry.validate({"mem_size": mem_size, "batch_size_mem": 16, "alpha": 0.5, "beta": 1.0}, "strategy"))
    if avalanche_memory:
        strategy.storage_policy = ClassBalancedBufferWithLogits(mem_size, adaptive_size=True)
    data = [d.replace_current_transform_group(transform) if transform is not None and i > 0 else d
            for i, d in enumerate(tensor_dataset(x, y) for x, y in stream.train)]
    RNGManager.set_random_seeds(0)
    for experience in benchmark_from_datasets(train=data, test=data).train_stream:
        strategy.train(experience, eval_streams=[])
    return strategy


def columns(memory):
    buffer = memory.buffer
    return default_collate([buffer[i] for i in range(len(buffer))])


def weights(strategy):
    return [p.detach().clone() for p in strategy.model.state_dict().values()]


@pytest.mark.parametrize("mem_size", [50, 333, 5000])
def test_the_tensor_memory_holds_avalanches_samples_and_trains_the_same_model(stream, mem_size):
    """Same samples, labels, task labels and logits in the same order (so the same memory minibatches),
    and bit for bit the same weights after four experiences: full (5000), class shares of uneven size
    (333 over 10 classes) and a small memory."""
    ours = train(stream, avalanche_memory=False, mem_size=mem_size)
    theirs = train(stream, avalanche_memory=True, mem_size=mem_size)
    assert isinstance(ours.storage_policy, TensorMemoryWithLogits) and ours.storage_policy._avalanche is None
    got, want = columns(ours.storage_policy), columns(theirs.storage_policy)
    assert len(got[0]) == len(want[0]) == min(mem_size, sum(len(y) for _, y in stream.train))
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(got, want))
    assert all(torch.equal(a, b) for a, b in zip(weights(ours), weights(theirs)))


def test_the_same_without_tensor_batches(stream):
    """Avalanche's own loaders reading the tensor memory also train the same model."""
    ours = train(stream, avalanche_memory=False, mem_size=200, fast=False)
    theirs = train(stream, avalanche_memory=True, mem_size=200, fast=False)
    assert all(torch.equal(a, b) for a, b in zip(weights(ours), weights(theirs)))


def test_data_with_a_transform_hands_the_memory_to_avalanche_and_trains_the_same(stream):
    """A transform has to run when a memory sample is drawn, so such data cannot be held as tensors: from
    the first experience with one (the second here) Avalanche's memory takes over what the first left."""
    scale = transforms.Lambda(lambda x: x * 0.5)
    ours = train(stream, avalanche_memory=False, mem_size=200, transform=scale)
    theirs = train(stream, avalanche_memory=True, mem_size=200, transform=scale)
    assert ours.storage_policy._avalanche is not None
    assert all(torch.equal(a, b) for a, b in zip(weights(ours), weights(theirs)))
    assert all(torch.equal(a, b) for a, b in zip(columns(ours.storage_policy), columns(theirs.storage_policy)))


def test_the_memory_survives_a_checkpoint(stream):
    """A job resumed from its checkpoint replays the same memory."""
    memory = train(stream, avalanche_memory=False, mem_size=200).storage_policy
    restored = pickle.loads(pickle.dumps(memory))
    assert all(torch.equal(a, b) for a, b in zip(columns(restored), columns(memory)))
    assert restored.seen_classes == memory.seen_classes and len(restored.buffer) == 200
