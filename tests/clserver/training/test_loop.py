"""The shared training loop: one strategy builder for experiments and updates, and the plugins each attaches."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from avalanche.training.determinism.rng_manager import RNGManager

from clserver.training import tensor_batches
from clserver.training.loop import stream_to_avalanche, strategy_build
from clserver.training.plugins import (
    CancelPlugin,
    CheckpointPlugin,
    LivePlugin,
    ProgressPlugin,
    StreamEvaluationPlugin,
    checkpoint_load,
    plugins_attach,
)
from clserver.training.streams import class_incremental, load_digits_arrays
from clserver.training.tensor_batches import TensorBatchesPlugin
from modelfactory.architectures import architecture_build, architecture_params

OPTIONS = {"training": {"epochs": 2, "train_mb_size": 16, "eval_mb_size": 64,
                        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}}}


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def stream():
    x, y = load_digits_arrays()
    keep = np.random.RandomState(0).permutation(len(y))[:400]
    return class_incremental(x[keep], y[keep], n_experiences=2, seed=1, test_size=0.2, input_shape=[64],
                             name="tiny")


def model() -> torch.nn.Module:
    RNGManager.set_random_seeds(0)
    return architecture_build(architecture="simple_mlp", params=architecture_params(
        architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 16}))


def build(name: str, plugins: list[Any], params: dict | None = None) -> Any:
    options = {**OPTIONS, "strategy": {"name": name, "params": params or {}}}
    from clserver.training.strategies import STRATEGIES

    options["strategy"]["params"] = STRATEGIES.get(name, "strategy").validate(params or {}, "strategy")
    return strategy_build(model=model(), options=options, device=torch.device("cpu"), plugins=plugins)


def test_the_chosen_plugins_sit_after_the_strategys_own_and_before_avalanches_evaluator_and_clock():
    progress, cancel = ProgressPlugin(), CancelPlugin(check=lambda: None)
    strategy = build("replay", [progress, cancel], {"mem_size": 20})
    names = [type(p).__name__ for p in strategy.plugins]
    assert names[:4] == ["ReplayPlugin", "TensorBatchesPlugin", "ProgressPlugin", "CancelPlugin"]
    assert strategy.plugins[-1] is strategy.clock and strategy.evaluator in strategy.plugins[4:]
    # Attaching again replaces the live plugins: none is doubled.
    plugins_attach(strategy, [progress, cancel])
    assert [type(p).__name__ for p in strategy.plugins] == names


def test_cancellation_stops_training_at_the_next_minibatch(stream):
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Stop()

    progress = ProgressPlugin()
    strategy = build("naive", [progress, CancelPlugin(check=check)])
    with pytest.raises(Stop):
        strategy.train(stream_to_avalanche(stream).train_stream[0], eval_streams=[])
    assert progress.samples == 2 * OPTIONS["training"]["train_mb_size"]  # two minibatches, not the third


def test_progress_reports_each_epochs_mean_loss_and_the_samples_trained_on(stream):
    epochs = []
    progress = ProgressPlugin(on_epoch_end=lambda **kw: epochs.append(kw))
    strategy = build("naive", [progress])
    strategy.train(stream_to_avalanche(stream).train_stream[0], eval_streams=[])
    assert [e["epoch"] for e in epochs] == [1, 2] and all(np.isfinite(e["loss"]) for e in epochs)
    assert progress.samples == 2 * len(stream.train[0][1]) and progress.train_time > 0


@pytest.mark.parametrize("name", ["replay", "der", "er_ace"])  # ER-ACE keeps an unpicklable loader until cleanup
def test_evaluation_and_checkpoint_follow_each_experience_and_the_checkpoint_resumes(stream, tmp_path: Path, name):
    rows, saved = [], []
    path = tmp_path / "checkpoint.pkl"
    plugins = [StreamEvaluationPlugin(evaluate=lambda m: [float(len(rows))], on_evaluated=lambda **kw: rows.append(kw)),
               CheckpointPlugin(path=path, on_saved=lambda: saved.append(path.stat().st_size),
                                on_failed=lambda exc: pytest.fail(str(exc)))]
    strategy = build(name, plugins, {"mem_size": 20})
    scenario = stream_to_avalanche(stream)
    strategy.train(scenario.train_stream[0], eval_streams=[])
    assert len(rows) == 1 and rows[0]["model"] is strategy.model and len(saved) == 1

    restored, start = checkpoint_load(build(name, [], {"mem_size": 20}), path, torch.device("cpu"))
    assert start == 1  # the clock had counted the experience when the checkpoint was written
    assert not any(isinstance(p, LivePlugin) for p in restored.plugins)
    holder = next((p for p in restored.plugins if type(p).__name__ == "ReplayPlugin"), restored)
    assert len(holder.storage_policy.buffer) == 20  # the memory travels with the checkpoint
    assert all(p in strategy.plugins for p in plugins) and strategy.experience is None
    assert all(torch.equal(a, b) for a, b in zip(restored.model.state_dict().values(),
                                                  strategy.model.state_dict().values()))


def test_a_failed_checkpoint_is_reported_and_training_goes_on(stream, tmp_path: Path):
    failed = []
    plugin = CheckpointPlugin(path=tmp_path / "missing" / "checkpoint.pkl", on_saved=lambda: None,
                              on_failed=failed.append)
    strategy = build("naive", [plugin])
    strategy.train(stream_to_avalanche(stream).train_stream[0], eval_streams=[])
    assert len(failed) == 1 and plugin in strategy.plugins


@pytest.mark.parametrize("name", ["naive", "replay", "ewc", "der", "lwf"])
def test_a_deployment_update_trains_from_tensor_batches_and_gets_the_same_candidate(stream, monkeypatch, name):
    from clserver.deployments.data import Memory
    from clserver.deployments.update import train_candidate

    (x_old, y_old), (x_new, y_new) = stream.train
    memory = Memory(x=x_old[:60], y=y_old[:60], seen=np.bincount(y_old, minlength=10))
    options = {**OPTIONS, "strategy": {"name": name, "params": {}}}
    from clserver.training.strategies import STRATEGIES

    options["strategy"]["params"] = STRATEGIES.get(name, "strategy").validate({}, "strategy")

    def candidate() -> tuple[list[torch.Tensor], Any]:
        RNGManager.set_random_seeds(0)
        progress = ProgressPlugin()
        strategy = train_candidate(model=model(), memory=memory, x=x_new, y=y_new, options=options,
                                   device=torch.device("cpu"), plugins=[progress])
        batches = next(p for p in strategy.plugins if isinstance(p, TensorBatchesPlugin))
        return [t.detach().clone() for t in strategy.model.state_dict().values()], (batches, progress)

    fast, (batches, progress) = candidate()
    assert batches.used == 1  # the new data (the memory experience trains for zero epochs)
    assert progress.samples >= 2 * len(y_new)
    monkeypatch.setattr(tensor_batches, "tensor_loader", lambda *a, **k: None)
    monkeypatch.setattr(tensor_batches, "memory_loader", lambda *a, **k: None)
    slow, (batches, _) = candidate()
    assert batches.used == 0
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))
