"""Early stopping: an experience's or update's training ends once its held-out accuracy (or loss) stops improving.

`training.early_stopping` is null (train every epoch) or an object of `EARLY_STOPPING_PARAMS`. The
plugin scores the model on held-out data after each epoch, keeps the best weights, and after
`patience` epochs without an improvement of more than `min_delta` (never before `min_epochs`) puts
them back and calls Avalanche's `strategy.stop_training()`. With `lr_drops`, the first plateaus put the
best weights back, multiply the learning rate by `lr_drop_factor` and wait `patience` epochs again; the
experience's own learning rates come back when it ends. It scores on arrays directly rather than
through Avalanche's `EarlyStoppingPlugin`, which reads a metric from the evaluator after a periodic
`strategy.eval` on a stream: the loop's evaluator computes no metrics (they cost time on every run),
and a periodic eval runs every plugin's eval hooks and the evaluator in the middle of training.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from clserver.training.plugins import LivePlugin
from clserver.training.streams import Stream

from clserver.training.early_stopping_options import (  # noqa: F401  (one import place for the runner)
    EARLY_STOPPING,
    MAX_EPOCHS,
    early_stopping_check,
    early_stopping_on,
)


def holdout_indices(*, n: int, fraction: float, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of an experience of n samples: the same on every run (and resume) of a
    seed, from their own generator, so the training's random numbers are not touched. At least one of
    each when n >= 2."""
    order = np.random.RandomState([seed, index]).permutation(n)
    n_hold = min(max(int(round(n * fraction)), 1), n - 1) if n >= 2 else 0
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def stream_held_out(*, stream: Stream, fraction: float,
                    seed: int) -> tuple[Stream, list[tuple[np.ndarray, np.ndarray]]]:
    """The stream with `fraction` of each experience's training data held out, and the held-out (x, y) of each."""
    train, held = [], []
    for j, (x, y) in enumerate(stream.train):
        keep, hold = holdout_indices(n=len(y), fraction=fraction, seed=seed, index=j)
        train.append((x[keep], y[keep]))
        held.append((x[hold], y[hold]))
    return dataclasses.replace(stream, train=train), held


def no_improvement(patience: int) -> str:
    return f"no improvement in {patience} epoch{'s' if patience != 1 else ''}"


class EarlyStoppingPlugin(LivePlugin):
    """Scores the model on `held_out` (x, y arrays, set before each `train`) after every epoch; stops
    training as the options say, leaving the best-scoring weights in the model. `epochs_trained` and
    `stopped` describe the last experience trained."""

    def __init__(self, *, options: dict[str, Any], batch: int = 1024) -> None:
        super().__init__()
        self.options = options
        self.batch = batch
        self.held_out: tuple[np.ndarray, np.ndarray] | None = None
        self.epochs_trained = 0
        self.stopped = MAX_EPOCHS
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.lr_drops = 0
        self.lrs: list[float] | None = None  # the learning rates before the first cut of the experience

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.epochs_trained, self.stopped = 0, MAX_EPOCHS
        self.best, self.best_epoch, self.best_state = None, 0, None
        self.lr_drops, self.lrs = 0, None

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.epochs_trained += 1
        if self.held_out is None or not len(self.held_out[1]):
            return
        score = self.score(strategy.model, strategy.device)
        delta = self.options["min_delta"]
        better = self.best is None or (score > self.best + delta if self.options["metric"] == "accuracy"
                                        else score < self.best - delta)
        if better:
            self.best, self.best_epoch = score, self.epochs_trained
            self.best_state = {k: v.detach().clone() for k, v in strategy.model.state_dict().items()}
        last = self.epochs_trained >= strategy.train_epochs
        waited = self.epochs_trained - self.best_epoch
        stop = (not last and self.epochs_trained >= self.options["min_epochs"]
                and waited >= self.options["patience"])
        if stop and self.lr_drops < self.options.get("lr_drops", 0):
            # A plateau before the last cut: back to the best weights, a smaller step, patience again.
            if self.best_state is not None:
                strategy.model.load_state_dict(self.best_state)
            if self.lrs is None:
                self.lrs = [group["lr"] for group in strategy.optimizer.param_groups]
            for group in strategy.optimizer.param_groups:
                group["lr"] *= self.options.get("lr_drop_factor", 0.1)
            self.lr_drops += 1
            self.best_epoch = self.epochs_trained
        elif stop:
            # As Avalanche's plugin does: the best weights come back when it stops (here before any plugin's
            # after_training_exp, a replay buffer, EWC's importances, LwF's teacher, sees the model); a run
            # that trains every epoch ends as it would without early stopping.
            if self.best_state is not None:
                strategy.model.load_state_dict(self.best_state)
            self.stopped = no_improvement(self.options["patience"])
            strategy.stop_training()  # Avalanche ends the epoch loop before the next epoch

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.best_state = None  # not kept beyond the experience
        if self.lrs is not None:  # the next experience (or update) starts at the learning rates set
            for group, lr in zip(strategy.optimizer.param_groups, self.lrs):
                group["lr"] = lr
            self.lrs = None

    def score(self, model: torch.nn.Module, device: torch.device) -> float:
        """Accuracy or mean cross-entropy of `model` on the held-out data."""
        x, y = self.held_out  # type: ignore[misc]
        was_training = model.training
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(y), self.batch):
                xb = torch.from_numpy(np.ascontiguousarray(x[start:start + self.batch])).to(device)
                yb = torch.from_numpy(np.ascontiguousarray(y[start:start + self.batch])).to(device)
                out = model(xb)
                correct += int((out.argmax(dim=1) == yb).sum())
                loss += float(torch.nn.functional.cross_entropy(out, yb, reduction="sum"))
        model.train(was_training)
        return correct / len(y) if self.options["metric"] == "accuracy" else loss / len(y)

    def record(self) -> dict[str, Any]:
        """What the last experience's training did, for its results."""
        return {"epochs_trained": self.epochs_trained, "stopped": self.stopped}
