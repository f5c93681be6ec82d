"""The training run of one experiment on Avalanche (imported by the worker only).

Progress events, cancellation, checkpointing and MLflow logging hang off Avalanche's plugin
hooks; the loop itself trains experience by experience and evaluates the whole test stream
after each one to fill the accuracy matrix.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.checkpointing import maybe_load_checkpoint, save_checkpoint
from avalanche.core import SupervisedPlugin
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from django.conf import settings
from django.db import transaction
from torch import nn

from clserver.training import metrics
from claas_site import tracking
from clserver.training.benchmarks import benchmark_source
from clserver.experiments.events import experiment_event_record, json_safe
from clserver.models import Experiment
from clserver.experiments.selectors import text_paths_hidden
from clserver.training.streams import Stream
from clserver.training.strategies import OPTIMIZERS, STRATEGIES
from clserver.training.tensor_batches import TensorBatchesPlugin
from modelfactory.architectures import architecture_build

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pkl"
FINAL_MODEL_NAME = "final_model.pt"


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


def stream_to_avalanche(stream: Stream) -> Any:
    """Tensor datasets straight from arrays: no per-sample transforms or file reads."""
    def ds(x: np.ndarray, y: np.ndarray) -> Any:
        return _make_taskaware_tensor_classification_dataset(torch.from_numpy(x), torch.from_numpy(y))

    return benchmark_from_datasets(train=[ds(*p) for p in stream.train], test=[ds(*p) for p in stream.test])


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


def initial_model(experiment: Experiment) -> nn.Module:
    model_opts = experiment.options["model"]
    model = architecture_build(architecture=model_opts["architecture"], params=model_opts["params"])
    if experiment.registered_version_id:
        path = settings.DATA_DIR / experiment.registered_version.weights_file
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def cpu_model(model: nn.Module) -> nn.Module:
    """The model as MLflow should store it: on the CPU, so that it loads on any machine (a copy when
    training ran on a GPU; the model itself otherwise)."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


@contextlib.contextmanager
def rng_preserved(model: nn.Module) -> Iterator[None]:
    """MLflow runs the model on the input example; keep that from shifting the training RNG."""
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
        model.train(was_training)


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
    """Restore a strategy saved by checkpoint_save; (strategy, 0) when there is none."""
    fresh_optimizer = strategy.optimizer
    strategy, start = maybe_load_checkpoint(strategy, str(path), map_location=device)
    saved = strategy.__dict__.pop("_claas_optimizer", None)
    if saved is not None:
        optimizer = type(fresh_optimizer)(strategy.model.parameters(), **saved["defaults"])
        optimizer.load_state_dict(saved["state"])
        strategy.optimizer = optimizer
    return strategy, start


class ProgressPlugin(SupervisedPlugin):
    """Epoch-end events with the loss, progress on the row, samples counted, cancel checked."""

    def __init__(self, run: "ExperimentRun") -> None:
        super().__init__()
        self.run = run
        self.loss_sum = 0.0
        self.loss_n = 0
        self.samples = 0
        self.epoch = 0

    def before_training_exp(self, strategy, *args, **kwargs) -> None:
        self.samples = 0
        self.epoch = 0

    def before_training_epoch(self, strategy, *args, **kwargs) -> None:
        self.loss_sum, self.loss_n = 0.0, 0

    def after_training_iteration(self, strategy, *args, **kwargs) -> None:
        n = len(strategy.mb_y)
        self.samples += n
        self.loss_sum += float(strategy.loss.detach()) * n
        self.loss_n += n
        self.run.job.check_cancel()

    def after_training_epoch(self, strategy, *args, **kwargs) -> None:
        self.epoch += 1
        loss = self.loss_sum / max(self.loss_n, 1)
        self.run.epoch_end(epoch=self.epoch, loss=loss)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"Training diverged in experience {self.run.current} at epoch {self.epoch}: the loss is not "
                "finite; lower the learning rate or the strategy's regularisation strength.")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the model is unusable and the run stops with the reason."""


class ExperimentRun:
    """Trains one experiment; `job` is its JobRunner (heartbeat, cancel, row updates)."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.experiment: Experiment = job.row
        self.options = self.experiment.options
        self.training = self.options["training"]
        self.dir = Path(job.workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = self.dir / CHECKPOINT_NAME
        self.entry = STRATEGIES.get(self.options["strategy"]["name"], "strategy.name")
        self.offline = bool(self.entry.extra.get("offline"))
        self.started = time.perf_counter()
        self.current = 0
        self.n_units = 1
        self.epochs = self.training["epochs"]
        self.run_id = ""
        self.tracking_errors: list[str] = []
        self.epoch_losses: list[tuple[int, float]] = []  # (step, loss) not yet in MLflow

    # --- events --------------------------------------------------------------------------
    def event(self, type: str, payload: dict[str, Any]) -> None:
        experiment_event_record(experiment=self.experiment, type=type, payload=payload)

    def epoch_end(self, *, epoch: int, loss: float) -> None:
        progress = (self.current + epoch / self.epochs) / self.n_units
        elapsed = time.perf_counter() - self.started
        # Inside the timed training: one transaction for the row and the event; the loss goes to MLflow
        # with the experience's other metrics, after its training (one call instead of one per epoch).
        with transaction.atomic():
            self.job.update(epoch=epoch, experience=self.current, progress=progress)
            self.event("epoch_end", {
                "experience": self.current, "n_experiences": self.n_units, "epoch": epoch, "epochs": self.epochs,
                "loss": loss, "progress": progress, "elapsed_s": elapsed,
                "eta_s": elapsed / max(progress, 1e-9) * (1 - progress) if progress > 0 else None,
            })
        self.epoch_losses.append((self.current * self.epochs + epoch, loss))

    def flush_epoch_losses(self) -> None:
        """Log the buffered per-epoch training losses to the MLflow run (`train_loss`, step = epoch count)."""
        losses, self.epoch_losses = self.epoch_losses, []
        if self.run_id and losses:
            self._track(tracking.run_metric_history, run_id=self.run_id, key="train_loss", values=losses)

    def _track(self, fn, **kwargs) -> Any:
        """MLflow is a record, not the work: a tracking failure is reported and training goes on."""
        try:
            return fn(**kwargs)
        except Exception as exc:
            logger.warning("MLflow %s failed: %s", fn.__name__, exc, exc_info=True)
            self.tracking_errors.append(text_paths_hidden(f"{fn.__name__}: {exc}")[:300])
            return None

    # --- the run -------------------------------------------------------------------------
    def run(self) -> None:
        with server_paths_hidden(), kernels_deterministic(self.training.get("deterministic", False)):
            self._run()

    def _run(self) -> None:
        opts, training = self.options, self.training
        RNGManager.set_random_seeds(training["seed"])
        device = resolve_device(training["device"])
        _, source = benchmark_source(name=opts["benchmark"]["name"],
                                     params={k: v for k, v in opts["benchmark"].items() if k != "name"},
                                     owner=self.experiment.owner)
        stream = source.load()
        scenario = stream_to_avalanche(stream)
        T = stream.n_experiences
        self.n_units = 1 if self.offline else T

        model = initial_model(self.experiment)
        opt_opts = dict(training["optimizer"])
        optimizer = OPTIMIZERS.get(opt_opts.pop("name"), "training.optimizer.name").builder(model.parameters(), **opt_opts)
        progress_plugin = ProgressPlugin(self)
        common = {
            "train_mb_size": training["train_mb_size"], "train_epochs": training["epochs"],
            "eval_mb_size": training["eval_mb_size"], "device": device,
            # Tensor batches come after any plugin that builds the loader (replay's); same batches, faster.
            "plugins": [progress_plugin, TensorBatchesPlugin()],
            "evaluator": EvaluationPlugin(loggers=[]),
        }
        strategy = self.entry.builder(model, optimizer, nn.CrossEntropyLoss(), common,
                                      **opts["strategy"]["params"])
        strategy, start = checkpoint_load(strategy, self.checkpoint, device)
        resumed = start > 0
        if not resumed and self.experiment.source_id:
            strategy = self._continue_from_source(strategy, device)
        self._own_plugins(strategy, progress_plugin)
        if not resumed:
            RNGManager.set_random_seeds(training["seed"])

        state = self._state(start, resumed)
        if not state["initial_accuracy"]:
            state["initial_accuracy"] = evaluate(strategy.model, stream, device, training["eval_mb_size"])
        self.run_id = self._mlflow_run()
        if resumed:
            self.event("resumed", {"from_experience": start, "attempt": self.experiment.attempts})

        sizes = [len(t[1]) for t in stream.test]
        units = [None] if self.offline else list(range(T))
        for i in range(start, len(units)):
            self.current = i
            self.job.check_cancel()
            self.job.update(experience=i, epoch=0)
            t0 = time.perf_counter()
            try:
                strategy.train(scenario.train_stream if self.offline else scenario.train_stream[i])
            finally:
                train_time = time.perf_counter() - t0
                self.flush_epoch_losses()  # a failed or cancelled experience keeps its curve too
            t1 = time.perf_counter()
            row = evaluate(strategy.model, stream, device, training["eval_mb_size"])
            eval_time = time.perf_counter() - t1
            self.model_for_logging = strategy.model
            self._experience_done(state, i, row, stream, train_time, eval_time, progress_plugin.samples, sizes)
            self._save_checkpoint(strategy, progress_plugin)

        self._finish(state, strategy.model, stream, sizes)

    # --- pieces --------------------------------------------------------------------------
    def _state(self, start: int, resumed: bool) -> dict[str, Any]:
        """Per-experience results so far (kept on the row, so a resumed run carries on)."""
        old = self.experiment.results if resumed else {}
        return {
            "matrix": list(old.get("metrics", {}).get("accuracy_matrix", []))[:start],
            "experiences": list(old.get("experiences", []))[:start],
            "initial_accuracy": list(old.get("metrics", {}).get("initial_accuracy", [])),
            "mlflow_models": list(old.get("mlflow_models", []))[:start],
        }

    def _continue_from_source(self, strategy: Any, device: torch.device) -> Any:
        """from_experiment: the same strategy takes over its whole state (memory included);
        another strategy takes over the model weights only."""
        source = self.experiment.source
        source_dir = Path(self.job.workdir_of(source))
        if source.options["strategy"]["name"] == self.options["strategy"]["name"] and (source_dir / CHECKPOINT_NAME).exists():
            fresh = {k: getattr(strategy, k) for k in ("train_epochs", "train_mb_size", "eval_mb_size")}
            strategy, _ = checkpoint_load(strategy, source_dir / CHECKPOINT_NAME, device)
            for key, value in fresh.items():
                setattr(strategy, key, value)
            opt = dict(self.training["optimizer"])
            opt.pop("name")
            for group in strategy.optimizer.param_groups:
                group.update({k: v for k, v in opt.items() if k in group})
            self.event("continued", {"from_experiment": source.name, "state": "strategy"})
        else:
            weights = torch.load(source_dir / FINAL_MODEL_NAME, map_location="cpu", weights_only=True)
            strategy.model.load_state_dict(weights)
            self.event("continued", {"from_experiment": source.name, "state": "weights"})
        return strategy

    @staticmethod
    def _own_plugins(strategy: Any, progress_plugin: ProgressPlugin) -> None:
        # A checkpoint restores the plugin list without our live plugin; put it back once.
        strategy.plugins = [p for p in strategy.plugins if not isinstance(p, ProgressPlugin)] + [progress_plugin]

    def _save_checkpoint(self, strategy: Any, progress_plugin: ProgressPlugin) -> None:
        plugins = strategy.plugins
        strategy.plugins = [p for p in plugins if p is not progress_plugin]
        try:
            checkpoint_save(strategy, self.checkpoint)
            self.event("checkpoint", {"experience": self.current})
        except Exception as exc:
            # Losing the ability to resume is better than losing the run itself.
            logger.exception("checkpoint of experiment %s failed", self.experiment.pk)
            self.event("checkpoint_failed", {"experience": self.current, "error": str(exc)[:300]})
        finally:
            strategy.plugins = plugins

    def _mlflow_run(self) -> str:
        if self.experiment.mlflow_run_id:
            return self.experiment.mlflow_run_id
        user = self.experiment.owner.username
        started = self._track(tracking.run_start, username=user, run_name=self.experiment.name,
                              params=self.options, tags={"claas.user": user, "claas.experiment": self.experiment.name})
        if started is None:
            return ""
        self.mlflow_experiment_id, run_id = started
        self.job.update(mlflow_run_id=run_id)
        self.experiment.mlflow_run_id = run_id
        return run_id

    def _experience_done(self, state: dict, i: int, row: list[float], stream: Stream, train_time: float,
                         eval_time: float, samples: int, sizes: list[int]) -> None:
        state["matrix"].append(row)
        trained = list(range(len(stream.train))) if self.offline else [i]
        record = {
            "index": i if not self.offline else len(stream.train) - 1,
            "classes": sorted({c for j in trained for c in stream.classes[j]}),
            "train_samples": int(sum(len(stream.train[j][1]) for j in trained)),
            "train_time_s": train_time,
            "eval_time_s": eval_time,
            "samples_processed": samples,
            "accuracy": row[trained[-1]],
            "accuracy_row": row,
            "stream_accuracy": metrics.stream_accuracy(row, sizes),
        }
        state["experiences"].append(record)
        if self.run_id:
            step_metrics = {"stream_accuracy": record["stream_accuracy"], "experience_accuracy": record["accuracy"],
                            "train_time_s": train_time, "samples_processed": samples,
                            **{f"accuracy_exp_{j}": a for j, a in enumerate(row)}}
            self._track(tracking.run_metrics, run_id=self.run_id, metrics=step_metrics, step=i)
        if self.run_id:
            with rng_preserved(self.model_for_logging):
                logged = self._track(tracking.model_log, run_id=self.run_id, model=cpu_model(self.model_for_logging),
                                     input_example=stream.test[0][0][:2], name=f"experience_{i}")
            state["mlflow_models"].append(logged["model_uri"] if logged else None)
        n_units = self.n_units
        progress = (i + 1) / n_units
        partial = self._results(state, sizes, complete=False)
        self.job.update(results=json_safe(partial), progress=progress, experience=i, epoch=self.epochs)
        self.event("experience_end", {
            "experience": i, "n_experiences": n_units, "accuracy_row": row, "accuracy": record["accuracy"],
            "stream_accuracy": record["stream_accuracy"], "train_time_s": train_time,
            "samples_processed": samples, "progress": progress,
            "elapsed_s": time.perf_counter() - self.started,
        })

    def _results(self, state: dict, sizes: list[int], complete: bool) -> dict[str, Any]:
        R = state["matrix"]
        summary = metrics.summary(R, state["initial_accuracy"], sizes)
        exps = state["experiences"]
        return {
            "metrics": summary,
            "experiences": exps,
            "cost": {
                "train_time_s": sum(e["train_time_s"] for e in exps),
                "eval_time_s": sum(e["eval_time_s"] for e in exps),
                "samples_processed": sum(e["samples_processed"] for e in exps),
                "torch_threads": torch.get_num_threads(),
            },
            "mlflow_models": state["mlflow_models"],
            "model": None,
            "mlflow": self._mlflow_info(),
        }

    def _mlflow_info(self) -> dict[str, Any] | None:
        if not self.run_id:
            return {"error": "; ".join(self.tracking_errors)} if self.tracking_errors else None
        exp_id = getattr(self, "mlflow_experiment_id", None)
        if exp_id is None:
            info = self._track(lambda run_id: tracking.client().get_run(run_id).info, run_id=self.run_id)
            exp_id = info.experiment_id if info else ""
            self.mlflow_experiment_id = exp_id
        out = {"experiment_id": exp_id, "run_id": self.run_id,
               "url": tracking.run_url(experiment_id=exp_id, run_id=self.run_id)}
        if self.tracking_errors:
            out["errors"] = self.tracking_errors
        return out

    def _finish(self, state: dict, model: nn.Module, stream: Stream, sizes: list[int]) -> None:
        user, name = self.experiment.owner.username, self.experiment.name
        final_path = self.dir / FINAL_MODEL_NAME
        cpu_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(cpu_state, final_path)
        results = self._results(state, sizes, complete=True)
        model_info: dict[str, Any] = {
            # Relative to the data dir: the operator resolves it; a user learns nothing of the server's layout.
            "save_path": str(final_path.relative_to(settings.DATA_DIR)),
            "download_url": f"/api/experiments/{name}/model",
            "mlflow_uri": None,
            "architecture": self.options["model"]["architecture"],
            "params": self.options["model"]["params"],
            "format": "state_dict",
        }
        last_logged = state["mlflow_models"][-1] if state["mlflow_models"] else None
        if self.run_id and last_logged:
            registered = f"{user}.{name}"
            version = self._track(tracking.registry_add, name=registered, source=last_logged, run_id=self.run_id,
                                  tags={"claas.experiment": name, "claas.strategy": self.options["strategy"]["name"]})
            if version:
                model_info["mlflow_uri"] = f"models:/{registered}/{version}"
                model_info["mlflow_logged_uri"] = last_logged
                model_info["mlflow_version"] = version
        if self.run_id:
            self._track(tracking.run_metrics, run_id=self.run_id,
                        metrics={k: results["metrics"][k] for k in ("final_accuracy", "forgetting", "bwt", "fwt")},
                        step=len(state["matrix"]) - 1)
            self._track(tracking.run_end, run_id=self.run_id, status="FINISHED")
        results["model"] = model_info
        results["mlflow"] = self._mlflow_info()
        results["cost"]["wall_time_s"] = time.perf_counter() - self.started
        self.job.update(results=json_safe(results), progress=1.0)
