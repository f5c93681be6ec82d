"""`training.early_stopping.lr_drops`: checked at setup; at a plateau before the last cut, the best weights come
back, the learning rate is cut and patience starts again; the next experience starts at the learning rate set;
0 (the default) stops at the first plateau as before."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from clserver.training.early_stopping import EARLY_STOPPING, EarlyStoppingPlugin
from clserver.training.loop import stream_to_avalanche, strategy_build
from clserver.training.streams import class_incremental, load_digits_arrays
from modelfactory.architectures import architecture_build, architecture_params

SETUP = "/base-scenario/setup/"


@pytest.mark.parametrize("early_stopping, words", [
    ({"lr_drops": -1}, "training.early_stopping.lr_drops must be at least 0."),
    ({"lr_drops": 11}, "training.early_stopping.lr_drops must be at most 10."),
    ({"lr_drops": 1.5}, "training.early_stopping.lr_drops must be"),
    ({"lr_drop_factor": 1.0}, "training.early_stopping.lr_drop_factor must be at most 0.99."),
    ({"lr_drop_factor": 0.0}, "training.early_stopping.lr_drop_factor must be at least 0.001."),
])
def test_bad_lr_drops_are_refused_at_setup_with_one_sentence(api, user, early_stopping, words):
    response = api.post(SETUP, {"exp_name": "x", "training": {"early_stopping": early_stopping}}, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error.startswith(words) and error.endswith(".") and "\n" not in error


def test_lr_drops_are_stored_with_the_options(api, user):
    on = api.post(SETUP, {"exp_name": "on", "training": {"early_stopping": {"lr_drops": 2, "lr_drop_factor": 0.5}}},
                  format="json").json()
    stored = on["options"]["training"]["early_stopping"]
    assert (stored["lr_drops"], stored["lr_drop_factor"], stored["patience"]) == (2, 0.5, 2)


class Stub:
    """What the plugin uses of a strategy: a model, its optimizer, the epoch cap and `stop_training`."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(2, 2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.device = torch.device("cpu")
        self.train_epochs = 30
        self.stopped = False

    def stop_training(self) -> None:
        self.stopped = True


def epochs(plugin: EarlyStoppingPlugin, strategy: Stub, scores: list[float]) -> list[tuple[float, bool]]:
    """Train `scores` epochs (epoch e leaves every weight at e and scores scores[e - 1]): (lr, stopped) after each."""
    out = []
    for epoch, score in enumerate(scores, start=1):
        with torch.no_grad():
            for p in strategy.model.parameters():
                p.fill_(epoch)
        plugin.score = lambda model, device, score=score: score  # type: ignore[method-assign]
        plugin.after_training_epoch(strategy)
        out.append((strategy.optimizer.param_groups[0]["lr"], strategy.stopped))
        if strategy.stopped:
            break
    return out


def weights(strategy: Stub) -> float:
    return float(strategy.model.weight[0, 0])


def test_a_plateau_before_the_last_cut_restores_the_best_weights_cuts_the_lr_and_waits_again():
    plugin = EarlyStoppingPlugin(options=EARLY_STOPPING.coerce({"patience": 2, "lr_drops": 1, "lr_drop_factor": 0.1},
                                                               "training"))
    plugin.held_out = (np.zeros((1, 2), np.float32), np.zeros(1, np.int64))
    strategy = Stub()
    plugin.before_training_exp(strategy)
    got = epochs(plugin, strategy, [0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.9])
    lrs, stopped = zip(*got)
    # Epoch 4 is the first plateau (two epochs without beating epoch 2): the cut, training goes on ...
    assert lrs[:3] == (0.1, 0.1, 0.1) and lrs[3] == pytest.approx(0.01)
    # ... from the best weights (epoch 2's), until the second plateau (epoch 7): the stop, epoch 5's weights.
    assert stopped == (False,) * 6 + (True,) and plugin.epochs_trained == 7
    assert weights(strategy) == 5.0 and plugin.best == 0.7
    assert plugin.stopped == "no improvement in 2 epochs"
    plugin.after_training_exp(strategy)
    assert strategy.optimizer.param_groups[0]["lr"] == 0.1  # the next experience starts at the lr set


def test_without_lr_drops_the_first_plateau_stops_as_before():
    plugin = EarlyStoppingPlugin(options=EARLY_STOPPING.coerce({"patience": 2}, "training"))
    plugin.held_out = (np.zeros((1, 2), np.float32), np.zeros(1, np.int64))
    strategy = Stub()
    plugin.before_training_exp(strategy)
    got = epochs(plugin, strategy, [0.5, 0.6, 0.6, 0.6, 0.7])
    assert got == [(0.1, False)] * 3 + [(0.1, True)] and weights(strategy) == 2.0


def test_lr_drops_train_longer_and_no_worse_on_held_out_data_in_a_real_strategy():
    x, y = load_digits_arrays()
    keep = np.random.RandomState(0).permutation(len(y))[:400]
    stream = class_incremental(x[keep], y[keep], n_experiences=2, seed=1, test_size=0.2, input_shape=[64],
                               name="tiny")
    options = {"training": {"epochs": 40, "train_mb_size": 16, "eval_mb_size": 64,
                            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}},
               "strategy": {"name": "naive", "params": {}}}

    def run(early: dict[str, Any]) -> list[tuple[int, float, float]]:
        torch.manual_seed(0)
        model = architecture_build(architecture="simple_mlp", params=architecture_params(
            architecture="simple_mlp", params={"num_classes": 10, "input_shape": [64], "hidden_size": 16}))
        plugin = EarlyStoppingPlugin(options=EARLY_STOPPING.coerce(early, "training"))
        strategy = strategy_build(model=model, options=options, device=torch.device("cpu"), plugins=[plugin])
        scenario = stream_to_avalanche(stream)
        out = []
        for i in range(2):
            plugin.held_out = stream.test[i]
            torch.manual_seed(i)
            strategy.train(scenario.train_stream[i], eval_streams=[])
            out.append((plugin.epochs_trained, plugin.best, strategy.optimizer.param_groups[0]["lr"]))
        return out

    plain = run({"patience": 1})
    cut = run({"patience": 1, "lr_drops": 2, "lr_drop_factor": 0.5})
    # Each experience trains at least one epoch per cut longer and hands the next experience the lr set (0.05),
    # not the cut one; the first, the same as without cuts up to its first plateau, keeps weights at least as
    # good on its held-out data.
    for (e0, _, lr0), (e1, _, lr1) in zip(plain, cut):
        assert e1 >= e0 + 2 and lr0 == lr1 == 0.05
    assert cut[0][1] >= plain[0][1]
