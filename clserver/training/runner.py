"""The training run of one experiment on Avalanche (imported by the worker only).

The strategy comes from the shared loop (`loop.strategy_build`); progress events, cancellation,
divergence, the MLflow loss curve, the evaluation after each experience and the checkpoint are
plugins on Avalanche's hooks (`plugins.py`). This module chooses them, trains experience by
experience, and turns each evaluation into the accuracy matrix, the events and the MLflow run.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.determinism.rng_manager import RNGManager
from django.conf import settings
from django.db import transaction
from torch import nn

from claas_site import tracking
from clserver.experiments.events import experiment_event_record, json_safe
from clserver.models import Experiment
from clserver.training import metrics
from clserver.training.benchmarks import benchmark_source
from clserver.training.early_stopping import MAX_EPOCHS, EarlyStoppingPlugin, early_stopping_on, stream_held_out
from clserver.training.loop import (  # noqa: F401  (evaluate and stream_to_avalanche: bench/ imports them here)
    evaluate,
    kernels_deterministic,
    resolve_device,
    server_paths_hidden,
    stream_to_avalanche,
    strategy_build,
)
from clserver.training.mlflow_logging import MlflowExperiencePlugin, run_summary_log
from clserver.training.plugins import (
    CancelPlugin,
    CheckpointPlugin,
    DivergencePlugin,
    MlflowLossPlugin,
    ProgressPlugin,
    StreamEvaluationPlugin,
    Tracker,
    YieldToServingPlugin,
    checkpoint_load,
    plugins_attach,
)
from clserver.training.strategies import STRATEGIES
from modelfactory.architectures import architecture_build

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pkl"
FINAL_MODEL_NAME = "final_model.pt"


def initial_model(experiment: Experiment) -> nn.Module:
    model_opts = experiment.options["model"]
    model = architecture_build(architecture=model_opts["architecture"], params=model_opts["params"])
    if experiment.registered_version_id:
        path = settings.DATA_DIR / experiment.registered_version.weights_file
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


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
        self.tracker = Tracker()

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

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    # --- the run -------------------------------------------------------------------------
    def run(self) -> None:
        with server_paths_hidden(), kernels_deterministic(self.training.get("deterministic", False)):
            self._run()

    def _run(self) -> None:
        opts, training = self.options, self.training
        # The MLflow run exists from the start (a run cancelled or failed before its first experience is in
        # MLflow too), and is started before seeding so that nothing it does can shift the seeded RNGs.
        self.tracker.run_id = self._mlflow_run()
        RNGManager.set_random_seeds(training["seed"])
        device = resolve_device(training["device"])
        _, source = benchmark_source(name=opts["benchmark"]["name"],
                                     params={k: v for k, v in opts["benchmark"].items() if k != "name"},
                                     owner=self.experiment.owner)
        self.stream = stream = source.load()
        self.early_stopping, held_out = None, []
        if early := early_stopping_on(training):
            # Each experience trains on what is not held out of it.
            stream, held_out = stream_held_out(stream=stream, fraction=early["validation_fraction"],
                                               seed=training["seed"])
            self.stream = stream
            self.early_stopping = EarlyStoppingPlugin(options=early, batch=training["eval_mb_size"])
        self.sizes = [len(t[1]) for t in stream.test]
        scenario = stream_to_avalanche(stream)
        T = stream.n_experiences
        self.n_units = 1 if self.offline else T

        plugins = self._plugins(lambda model: evaluate(model, stream, device, training["eval_mb_size"]))
        strategy = strategy_build(model=initial_model(self.experiment), options=opts, device=device, plugins=plugins)
        strategy, start = checkpoint_load(strategy, self.checkpoint, device)
        resumed = start > 0
        if not resumed and self.experiment.source_id:
            strategy = self._continue_from_source(strategy, device)
        plugins_attach(strategy, plugins)  # a checkpoint brings the strategy back without them
        if not resumed:
            RNGManager.set_random_seeds(training["seed"])

        self.state = self._state(start, resumed)
        if not self.state["initial_accuracy"]:
            self.state["initial_accuracy"] = evaluate(strategy.model, stream, device, training["eval_mb_size"])
        if resumed:
            self.event("resumed", {"from_experience": start, "attempt": self.experiment.attempts})

        units = [None] if self.offline else list(range(T))
        for i in range(start, len(units)):
            self.current = i
            self.job.check_cancel()
            self.job.update(experience=i, epoch=0)
            if self.early_stopping is not None:
                # It stops on the held-out part of every experience so far: what it has learned, not only the last.
                parts = held_out if self.offline else held_out[:i + 1]
                self.early_stopping.held_out = (np.concatenate([p[0] for p in parts]),
                                                np.concatenate([p[1] for p in parts]))
            try:
                # The plugins evaluate, record and checkpoint the experience before `train` returns.
                strategy.train(scenario.train_stream if self.offline else scenario.train_stream[i])
            finally:
                self.loss_curve.flush()  # a failed or cancelled experience keeps its curve too

        self._finish(strategy.model)

    def _plugins(self, evaluate_model: Any) -> list[Any]:
        """What an experiment attaches to the shared loop, in hook order."""
        self.progress = ProgressPlugin(on_epoch_end=self.epoch_end)
        self.loss_curve = MlflowLossPlugin(tracker=self.tracker, progress=self.progress,
                                           step=lambda epoch: self.current * self.epochs + epoch)
        return [
            self.progress,
            CancelPlugin(check=self.job.check_cancel),
            YieldToServingPlugin(),
            self.loss_curve,
            DivergencePlugin(progress=self.progress, experience=lambda: self.current),
            *([self.early_stopping] if self.early_stopping is not None else []),
            StreamEvaluationPlugin(evaluate=evaluate_model, on_evaluated=self._experience_done),
            MlflowExperiencePlugin(tracker=self.tracker, step=lambda: self.current, figures=lambda: self.figures,
                                   example=lambda: self.stream.test[0][0][:2],
                                   on_logged=self.state_after_logging),
            CheckpointPlugin(path=self.checkpoint, on_saved=self._checkpoint_saved, on_failed=self._checkpoint_failed),
        ]

    def state_after_logging(self, model_uri: str | None) -> None:
        self.state["mlflow_models"].append(model_uri)

    def _checkpoint_saved(self) -> None:
        self.event("checkpoint", {"experience": self.current})

    def _checkpoint_failed(self, exc: Exception) -> None:
        # Losing the ability to resume is better than losing the run itself.
        self.event("checkpoint_failed", {"experience": self.current, "error": str(exc)[:300]})

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

    def _mlflow_run(self) -> str:
        if self.experiment.mlflow_run_id:
            return self.experiment.mlflow_run_id
        user = self.experiment.owner.username
        started = self.tracker(tracking.run_start, username=user, run_name=self.experiment.name,
                               params=self.options, tags={"claas.user": user, "claas.experiment": self.experiment.name})
        if started is None:
            return ""
        self.mlflow_experiment_id, run_id = started
        self.job.update(mlflow_run_id=run_id)
        self.experiment.mlflow_run_id = run_id
        return run_id

    def _experience_done(self, *, model: nn.Module, row: list[float], eval_time: float) -> None:
        """The evaluation after an experience's training: its record, its MLflow step, its event."""
        state, i, stream, sizes = self.state, self.current, self.stream, self.sizes
        train_time, samples = self.progress.train_time, self.progress.samples
        state["matrix"].append(row)
        trained = list(range(len(stream.train))) if self.offline else [i]
        record = {
            "index": i if not self.offline else len(stream.train) - 1,
            "classes": sorted({c for j in trained for c in stream.classes[j]}),
            "train_samples": int(sum(len(stream.train[j][1]) for j in trained)),
            "train_time_s": train_time,
            "eval_time_s": eval_time,
            "samples_processed": samples,
            "epochs_trained": self.progress.epoch,
            "stopped": self.early_stopping.stopped if self.early_stopping is not None else MAX_EPOCHS,
            "accuracy": row[trained[-1]],
            "accuracy_row": row,
            "stream_accuracy": metrics.stream_accuracy(row, sizes),
        }
        state["experiences"].append(record)
        # The experience's MLflow step (MlflowExperiencePlugin logs it, and the model, right after this).
        self.figures = {"stream_accuracy": record["stream_accuracy"], "experience_accuracy": record["accuracy"],
                        "train_time_s": train_time, "samples_processed": samples,
                        **{f"accuracy_exp_{j}": a for j, a in enumerate(row)}}
        n_units = self.n_units
        progress = (i + 1) / n_units
        partial = self._results(state, sizes, complete=False)
        self.job.update(results=json_safe(partial), progress=progress, experience=i, epoch=self.progress.epoch)
        self.event("experience_end", {
            "experience": i, "n_experiences": n_units, "accuracy_row": row, "accuracy": record["accuracy"],
            "stream_accuracy": record["stream_accuracy"], "train_time_s": train_time,
            "samples_processed": samples, "epochs_trained": record["epochs_trained"], "stopped": record["stopped"],
            "progress": progress,
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
            return {"error": "; ".join(self.tracker.errors)} if self.tracker.errors else None
        exp_id = getattr(self, "mlflow_experiment_id", None)
        if exp_id is None:
            info = self.tracker(lambda run_id: tracking.client().get_run(run_id).info, run_id=self.run_id)
            exp_id = info.experiment_id if info else ""
            self.mlflow_experiment_id = exp_id
        out = {"experiment_id": exp_id, "run_id": self.run_id,
               "url": tracking.run_url(experiment_id=exp_id, run_id=self.run_id)}
        if self.tracker.errors:
            out["errors"] = self.tracker.errors
        return out

    def _finish(self, model: nn.Module) -> None:
        state, sizes = self.state, self.sizes
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
            version = self.tracker(tracking.registry_add, name=registered, source=last_logged, run_id=self.run_id,
                                   tags={"claas.experiment": name, "claas.strategy": self.options["strategy"]["name"]})
            if version:
                model_info["mlflow_uri"] = f"models:/{registered}/{version}"
                model_info["mlflow_logged_uri"] = last_logged
                model_info["mlflow_version"] = version
        if self.run_id:
            self.tracker(tracking.run_metrics, run_id=self.run_id,
                         metrics={k: results["metrics"][k] for k in ("final_accuracy", "forgetting", "bwt", "fwt")},
                         step=len(state["matrix"]) - 1)
            results["cost"]["wall_time_s"] = time.perf_counter() - self.started
            run_summary_log(tracker=self.tracker, options=self.options, stream=self.stream, results=results)
            self.tracker(tracking.run_end, run_id=self.run_id, status="FINISHED")
        results["model"] = model_info
        results["mlflow"] = self._mlflow_info()
        results["cost"]["wall_time_s"] = time.perf_counter() - self.started
        self.job.update(results=json_safe(results), progress=1.0)
