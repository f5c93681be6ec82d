"""Training below serving's priority gives its core to a waiting web thread after every minibatch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from avalanche.training.plugins import EvaluationPlugin
from torch import nn

from clserver.training import plugins as plugins_module
from clserver.training.loop import stream_to_avalanche
from clserver.training.plugins import YieldToServingPlugin
from clserver.training.strategies import STRATEGIES
from clserver.training.streams import class_incremental, load_digits_arrays
from modelfactory.architectures import architecture_build, architecture_params


def train_counting_yields(monkeypatch, nice: int) -> tuple[int, int]:
    """(sched_yield calls, minibatches) over a short training with the plugin, the worker at `nice`."""
    from django.conf import settings

    monkeypatch.setattr(settings, "WORKER_NICE", nice)
    calls = []
    monkeypatch.setattr(plugins_module.os, "sched_yield", lambda: calls.append(1))
    x, y = load_digits_arrays()
    stream = class_incremental(x[:300], y[:300], n_experiences=2, seed=1, test_size=0.2, input_shape=[64], name="t")
    model = architecture_build(architecture="simple_mlp", params=architecture_params(
        architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 16}))
    entry = STRATEGIES.get("naive", "strategy")
    strategy = entry.builder(model, torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss(), {
        "train_mb_size": 16, "train_epochs": 2, "eval_mb_size": 64, "device": torch.device("cpu"),
        "plugins": [YieldToServingPlugin()], "evaluator": EvaluationPlugin(loggers=[])}, **entry.validate({}, "strategy"))
    for experience in stream_to_avalanche(stream).train_stream:
        strategy.train(experience, eval_streams=[])
    minibatches = sum(2 * int(np.ceil(len(ys) / 16)) for _, ys in stream.train)
    return len(calls), minibatches


def test_a_worker_below_serving_yields_after_every_minibatch(monkeypatch):
    calls, minibatches = train_counting_yields(monkeypatch, nice=10)
    assert calls == minibatches > 0


def test_a_worker_at_serving_priority_never_yields(monkeypatch):
    calls, minibatches = train_counting_yields(monkeypatch, nice=0)
    assert calls == 0 and minibatches > 0
