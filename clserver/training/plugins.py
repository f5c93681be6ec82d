"""The training loop's plugins on Avalanche's hooks: progress, cancel, divergence, MLflow, evaluation, checkpoint.

Each holds the run's callbacks, so none is saved in a checkpoint: `plugins_attach` puts the live ones
back on a strategy restored from one. An experiment attaches them all; a deployment update attaches
progress and cancellation (it validates, decides and registers after training).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.core import SupervisedPlugin
from avalanche.training import JointTraining

from claas_site import tracking
from clserver.experiments.selectors import text_paths_hidden

logger = logging.getLogger(__name__)


class LivePlugin(SupervisedPlugin):
    """A plugin bound to the running job: left out of checkpoints, attached again after a load."""


def plugins_attach(strategy: Any, plugins: Sequence[SupervisedPlugin]) -> None:
    """Attach `plugins` (replacing any live ones a checkpoint brought back) before Avalanche's evaluator,
    periodic evaluation and clock, which stay last."""
    kept = [p for p in strategy.plugins if not isinstance(p, LivePlugin)]
    at = kept.index(strategy.evaluator) if strategy.evaluator in kept else len(kept)
    strategy.plugins = kept[:at] + list(plugins) + kept[at:]


class ProgressPlugin(LivePlugin):
    """Samples trained on, the mean loss of each epoch (`on_epoch_end(epoch=, loss=)`) and the training
    time of each experience (from the start of `train` to the end of the strategy's own experience work)."""

    def __init__(self, *, on_epoch_end: Callable[..., None] | None = None) -> None:
        super().__init__()
        self.on_epoch_end = on_epoch_end
        self.samples = 0
        self.epoch = 0
        self.loss = 0.0
        self.loss_sum = 0.0
        self.loss_n = 0
        self.started = 0.0
        self.train_time = 0.0

    def before_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.samples = 0
        self.epoch = 0

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.loss_sum, self.loss_n = 0.0, 0

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        n = len(strategy.mb_y)
        self.samples += n
        self.loss_sum += float(strategy.loss.detach()) * n
        self.loss_n += n

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.epoch += 1
        self.loss = self.loss_sum / max(self.loss_n, 1)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch=self.epoch, loss=self.loss)

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        # Listed after the strategy's own plugins: replay buffers and importances are already updated.
        self.train_time = time.perf_counter() - self.started


class CancelPlugin(LivePlugin):
    """Stops training at the next minibatch once the job is cancelled (`check` raises)."""

    def __init__(self, *, check: Callable[[], None]) -> None:
        super().__init__()
        self.check = check

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.check()


class YieldToServingPlugin(LivePlugin):
    """After every minibatch, lets a web thread waiting for this core run first (`sched_yield`), where the
    worker runs below serving's priority (`CLAAS_WORKER_NICE` > 0, the embedded mode's default).

    A web thread that wakes on the core where training runs does not always preempt it at once: it may
    wait for the scheduler's next tick (milliseconds), which is what an update added to `predict`'s p99.
    Yielding bounds that wait to one minibatch; with nobody waiting it returns at once (about a microsecond).
    """

    def __init__(self) -> None:
        super().__init__()
        from django.conf import settings

        self.enabled = settings.WORKER_NICE > 0 and hasattr(os, "sched_yield")

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.enabled:
            os.sched_yield()


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the model is unusable and the run stops with the reason."""


class DivergencePlugin(LivePlugin):
    """Stops the run with the reason when an epoch's loss is not finite (list it after the plugins that
    record the epoch, so the diverged epoch is in the events and the loss curve)."""

    def __init__(self, *, progress: ProgressPlugin, experience: Callable[[], int]) -> None:
        super().__init__()
        self.progress = progress
        self.experience = experience

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if not math.isfinite(self.progress.loss):
            raise TrainingDiverged(
                f"Training diverged in experience {self.experience()} at epoch {self.progress.epoch}: the loss is "
                "not finite; lower the learning rate or the strategy's regularisation strength.")


class Tracker:
    """MLflow is a record, not the work: a tracking failure is logged, kept in `errors`, and the job goes on."""

    def __init__(self) -> None:
        self.run_id = ""
        self.errors: list[str] = []

    def __call__(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except Exception as exc:
            name = getattr(fn, "__name__", "mlflow")
            logger.warning("MLflow %s failed: %s", name, exc, exc_info=True)
            self.errors.append(text_paths_hidden(f"{name}: {exc}")[:300])
            return None


class MlflowLossPlugin(LivePlugin):
    """The per-epoch training loss as the run's `train_loss` curve: buffered during the experience and
    logged in one call after its training (`flush` also logs what a failed experience trained)."""

    def __init__(self, *, tracker: Tracker, progress: ProgressPlugin, step: Callable[[int], int]) -> None:
        super().__init__()
        self.tracker = tracker
        self.progress = progress
        self.step = step
        self.losses: list[tuple[int, float]] = []

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.losses.append((self.step(self.progress.epoch), self.progress.loss))

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.flush()

    def flush(self) -> None:
        losses, self.losses = self.losses, []
        if self.tracker.run_id and losses:
            self.tracker(tracking.run_metric_history, run_id=self.tracker.run_id, key="train_loss", values=losses)


class StreamEvaluationPlugin(LivePlugin):
    """After each `train` call: the model's accuracy on every experience's test data (`evaluate(model)`),
    handed to `on_evaluated(model=, row=, eval_time=)`."""

    def __init__(self, *, evaluate: Callable[[Any], list[float]], on_evaluated: Callable[..., None]) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.on_evaluated = on_evaluated

    def after_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        row = self.evaluate(strategy.model)
        self.on_evaluated(model=strategy.model, row=row, eval_time=time.perf_counter() - started)


class CheckpointPlugin(LivePlugin):
    """After each `train` call, the strategy (model, optimizer, memory, clock, RNG) saved to `path`; then
    `on_saved()`, or `on_failed(exc)`: losing the ability to resume is better than losing the run."""

    def __init__(self, *, path: Path, on_saved: Callable[[], None], on_failed: Callable[[Exception], None]) -> None:
        super().__init__()
        self.path = path
        self.on_saved = on_saved
        self.on_failed = on_failed

    def after_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        state = dict(vars(strategy))
        # Saved as `train` leaves the strategy right after this hook, without the live plugins: cleaned up
        # (the experience, ER-ACE's memory loader, which cannot be pickled), or JointTraining marked as
        # fitted (its own `train` skips the cleanup), so that a continuation behaves as it always has.
        strategy.plugins = [p for p in strategy.plugins if not isinstance(p, LivePlugin)]
        if isinstance(strategy, JointTraining):
            strategy._is_fitted = True
        else:
            strategy._train_cleanup()
        try:
            checkpoint_save(strategy, self.path)
        except Exception as exc:
            logger.exception("checkpoint %s failed", self.path)
            self.on_failed(exc)
        else:
            self.on_saved()
        finally:
            vars(strategy).update(state)


def checkpoint_save(strategy: Any, path: Path) -> None:
    """Avalanche's checkpoint, written atomically (a crash mid-write keeps the previous one).

    The optimizer object does not survive dill in this torch release, so its state_dict
    travels instead and the optimizer is rebuilt around the restored model on load.
    """
    opt = strategy.optimizer
    strategy._claas_optimizer = {"defaults": dict(opt.defaults), "state": opt.state_dict()}
    tmp = path.with_suffix(".tmp")
    try:
        save_checkpoint(strategy, str(tmp), exclude=["optimizer"])
        os.replace(tmp, path)
    finally:
        del strategy._claas_optimizer


def checkpoint_load(strategy: Any, path: Path, device: torch.device) -> tuple[Any, int]:
    """Restore a strategy saved by checkpoint_save; (strategy, 0) when there is none. Attach the live
    plugins again (`plugins_attach`) to the strategy it returns."""
    fresh_optimizer = strategy.optimizer
    strategy, start = maybe_load_checkpoint(strategy, str(path), map_location=device)
    saved = strategy.__dict__.pop("_claas_optimizer", None)
    if saved is not None:
        optimizer = type(fresh_optimizer)(strategy.model.parameters(), **saved["defaults"])
        optimizer.load_state_dict(saved["state"])
        strategy.optimizer = optimizer
    return strategy, start
