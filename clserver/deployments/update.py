"""The deployment update job (worker only): the champion and its replay memory trained on the
buffered data with Avalanche, validated against the champion, promoted or rejected, and
registered in MLflow (`<username>.deploy.<name>`, aliases `champion` and `challenger`).

The strategy sees two experiences: the replay memory (the past; trained for zero epochs, so
each strategy builds its own state from it: replay buffers, EWC importances, LwF's teacher)
and the new data. Training starts from the champion's weights: an update processes the new
data and a bounded memory, where retraining from scratch would process everything seen. The
strategy is the shared loop's (`clserver.training.loop`, tensor batches included), with the
progress and cancellation plugins of `clserver.training.plugins` attached.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.training.determinism.rng_manager import RNGManager
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from torch import nn

from clserver.deployments import data
from clserver.serving import cache as serving
from claas_site import tracking
from clserver.deployments.models import (
    Deployment,
    DeploymentUpdate,
    DeploymentVersion,
    UpdateDecision,
    VersionOrigin,
)
from clserver.deployments.events import deployment_event_record, update_event_payload
from clserver.deployments.paths import data_path, deployment_dir, registered_name
from clserver.deployments.registration import aliases_sync
from clserver.deployments.selectors import version_model
from clserver.deployments.services import update_release_batches
from clserver.jobs.runner import JobRunner, JobSuperseded
from clserver.models import JobStatus
from clserver.training.loop import (
    kernels_deterministic,
    resolve_device,
    server_paths_hidden,
    strategy_build,
    tensor_dataset,
)
from clserver.training.early_stopping import MAX_EPOCHS, EarlyStoppingPlugin, early_stopping_on
from clserver.training.plugins import CancelPlugin, ProgressPlugin, Tracker, YieldToServingPlugin

logger = logging.getLogger(__name__)


class DeploymentUpdateJob(JobRunner):
    model = DeploymentUpdate

    def run(self) -> None:
        UpdateRun(self).run()

    def on_status(self, status: str, error: str = "") -> None:
        update = DeploymentUpdate.objects.select_related("deployment__owner").get(pk=self.job_id)
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            # The data was not learned: it goes back to the buffer for the next update.
            update_release_batches(update=update)
        payload = update_event_payload(update)
        if error:
            payload["error"] = error
        deployment_event_record(deployment=update.deployment, type="update", payload=payload)


def update_failed_by_reaper(row: Any, reason: str) -> None:
    update = DeploymentUpdate.objects.select_related("deployment__owner").get(pk=row.pk)
    update_release_batches(update=update)
    deployment_event_record(deployment=update.deployment, type="update",
                            payload={**update_event_payload(update), "error": reason})


def train_candidate(*, model: nn.Module, memory: data.Memory, x: np.ndarray, y: np.ndarray,
                    options: dict[str, Any], device: torch.device, plugins: Sequence[Any]) -> Any:
    """Train `model` in place on (x, y) with the update's strategy (the shared loop's, tensor batches
    included), the memory as its past; the strategy comes back (its `model` is the candidate)."""
    strategy = strategy_build(model=model, options=options, device=device, plugins=plugins)
    experiences = ([tensor_dataset(memory.x, memory.y)] if len(memory) else []) + [tensor_dataset(x, y)]
    scenario = benchmark_from_datasets(train=experiences, test=[experiences[-1]])
    if len(memory):
        strategy.train_epochs = 0
        strategy.train(scenario.train_stream[0], eval_streams=[])
        strategy.train_epochs = options["training"]["epochs"]
    strategy.train(scenario.train_stream[-1], eval_streams=[])
    return strategy


def scores(model: nn.Module, val: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Accuracy on the validation set, on the held-out new data, and on both together."""
    model.eval()
    correct_val = int((serving.model_predict(model, val[0]) == val[1]).sum())
    correct_new = int((serving.model_predict(model, new[0]) == new[1]).sum())
    n_val, n_new = len(val[1]), len(new[1])
    return {"validation": correct_val / n_val if n_val else None, "new": correct_new / n_new if n_new else None,
            "union": (correct_val + correct_new) / max(n_val + n_new, 1), "n_validation": n_val, "n_new": n_new}


def weights_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


class UpdateRun:
    """One update: load, train, validate, decide, store, register."""

    def __init__(self, job: DeploymentUpdateJob) -> None:
        self.job = job
        self.update: DeploymentUpdate = DeploymentUpdate.objects.select_related("deployment__owner").get(pk=job.job_id)
        self.deployment: Deployment = self.update.deployment
        self.options = self.update.options
        self.training = self.options["training"]
        self.dir = deployment_dir(self.deployment)
        self.tracker = Tracker()

    def epoch_end(self, *, epoch: int, loss: float) -> None:
        deployment_event_record(deployment=self.deployment, type="update_progress", payload={
            "update": self.update.number, "epoch": epoch, "epochs": self.training["epochs"], "loss": loss})

    def run(self) -> None:
        with server_paths_hidden(), kernels_deterministic(self.training.get("deterministic", False)):
            self._run()

    def _run(self) -> None:
        update, deployment, opts = self.update, self.deployment, self.options
        if update.candidate_version is not None:
            # An earlier attempt stored its decision and then lost its worker: nothing is left to do.
            logger.info("deployment %s update %s was decided by an earlier attempt", deployment.name, update.id)
            return
        seed = self.training["seed"]
        RNGManager.set_random_seeds(seed)
        device = resolve_device(self.training["device"])
        base = deployment.versions.get(version=update.base_version)
        champion = version_model(deployment=deployment, version=base)
        memory = data.memory_read(data_path(base.memory_file))
        validation = data.npz_read(self.dir / "validation.npz")
        val = (validation["x"], validation["y"])
        batches = list(update.batches.order_by("id"))
        if not batches:
            raise RuntimeError("The update has no buffered data to train on.")
        arrays = [data.npz_read(data_path(b.file)) for b in batches]
        x_new = np.concatenate([a["x"] for a in arrays]).astype(np.float32)
        y_new = np.concatenate([a["y"] for a in arrays]).astype(np.int64)
        rng = np.random.RandomState(seed)
        train_idx, hold_idx = data.holdout_split(len(y_new), opts["validation_fraction"], rng)
        held = (x_new[hold_idx], y_new[hold_idx])
        before = scores(champion, val, held)

        candidate = copy.deepcopy(champion).train()
        plugin = ProgressPlugin(on_epoch_end=self.epoch_end)
        plugins = [plugin, CancelPlugin(check=self.job.check_cancel), YieldToServingPlugin()]
        stopping = None
        if early := early_stopping_on(self.training):
            # It stops on what the decision is made on: the validation set and the held-out new samples.
            stopping = EarlyStoppingPlugin(options=early, batch=self.training["eval_mb_size"])
            stopping.held_out = (np.concatenate([val[0], held[0]]).astype(np.float32),
                                 np.concatenate([val[1], held[1]]).astype(np.int64))
            plugins.append(stopping)
        started = time.perf_counter()
        candidate = train_candidate(model=candidate, memory=memory, x=x_new[train_idx], y=y_new[train_idx],
                                    options=opts, device=device, plugins=plugins).model
        train_time = time.perf_counter() - started
        candidate = candidate.cpu().eval()
        self.job.check_cancel()
        after = scores(candidate, val, held)
        finite = weights_finite(candidate)

        epochs = self.training["epochs"]
        scratch = int(update.samples_seen_total) * epochs
        cost = {
            "train_time_s": train_time,
            "samples_processed": plugin.samples,
            "new_samples": int(len(train_idx)),
            "memory_samples": int(len(memory)),
            "scratch_samples": scratch,
            "scratch_basis": f"{update.samples_seen_total} samples seen so far x {epochs} epochs",
            "saving": 1 - plugin.samples / scratch if scratch else None,
            "epochs_trained": plugin.epoch,
            "stopped": stopping.stopped if stopping is not None else MAX_EPOCHS,
        }
        tolerance = opts["tolerance"]
        accepted = finite and after["union"] >= before["union"] - tolerance
        if not finite:
            reason = "Training diverged: the candidate's weights are not finite numbers."
        else:
            verb = "is at least" if accepted else "is below"
            reason = (f"The candidate's validation accuracy {after['union']:.3f} {verb} the champion's "
                      f"{before['union']:.3f} minus the tolerance {tolerance:g} (validation set and "
                      f"{len(hold_idx)} held-out new samples).")

        weights_path = self.dir / "versions" / f"update-{update.id}.pt"
        torch.save({k: v.detach().cpu() for k, v in candidate.state_dict().items()}, weights_path)
        memory_path = data_path(base.memory_file)
        new_memory = memory
        if accepted:
            new_memory = data.memory_merge(memory=memory, x=x_new, y=y_new, size=opts["memory_size"],
                                           policy=opts["memory_policy"], rng=rng)
            memory_path = self.dir / "versions" / f"update-{update.id}-memory.npz"
            data.memory_write(memory_path, new_memory)

        decision = UpdateDecision.PROMOTED if accepted else UpdateDecision.REJECTED
        mlflow_version = self._register(candidate, val[0][:2], decision, before, after, cost)
        metrics = {"champion": before, "candidate": after, "tolerance": tolerance, "weights_finite": finite}
        if self.tracker.errors:
            metrics["mlflow_errors"] = self.tracker.errors
        number = self._store(decision=decision, reason=reason, metrics=metrics, cost=cost,
                             weights_path=weights_path, memory_path=memory_path, memory_size=len(new_memory),
                             validation_accuracy=after["validation"], mlflow_version=mlflow_version)
        self.tracker(aliases_sync, deployment_id=deployment.pk)
        logger.info("deployment %s update %s: version %s %s", deployment.name, update.id, number, self.update.decision)

    def _register(self, model: nn.Module, example: np.ndarray, decision: str, before: dict, after: dict,
                  cost: dict) -> str:
        d, update = self.deployment, self.update
        user = d.owner.username
        started = self.tracker(tracking.run_start, username=user, run_name=f"deploy {d.name} update {update.number}",
                               params={"deployment": d.name, "update": update.number, "trigger": update.trigger,
                                      "base_version": update.base_version, **self.options},
                              tags={"claas.user": user, "claas.deployment": d.name, "claas.update": str(update.number)})
        if started is None:
            return ""
        _, run_id = started
        DeploymentUpdate.objects.filter(pk=update.pk).update(mlflow_run_id=run_id)
        metrics = {f"{who}_{k}": v for who, m in (("champion", before), ("candidate", after))
                   for k, v in m.items() if isinstance(v, float)}
        metrics.update({k: v for k, v in cost.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        self.tracker(tracking.run_metrics, run_id=run_id, metrics=metrics, step=0)
        logged = self.tracker(tracking.model_log, run_id=run_id, model=model, input_example=example, name="model",
                              registered_name=registered_name(d),
                              tags={"claas.deployment": d.name, "claas.update": str(update.number),
                                   "claas.decision": decision})
        self.tracker(tracking.run_end, run_id=run_id, status="FINISHED")
        return (logged or {}).get("version", "")

    def _store(self, *, decision: str, reason: str, metrics: dict, cost: dict, weights_path: Path,
               memory_path: Path, memory_size: int, validation_accuracy: float | None, mlflow_version: str) -> int:
        """One transaction: the new version, the champion (when promoted), the update's outcome."""
        update = self.update
        with transaction.atomic():
            d = Deployment.objects.select_for_update().select_related("owner").get(pk=self.deployment.pk)
            if decision == UpdateDecision.PROMOTED and d.champion_version != update.base_version:
                decision = UpdateDecision.REJECTED
                reason = (f"The champion changed to version {d.champion_version} while the update ran; the "
                          f"candidate, trained from version {update.base_version}, was not promoted.")
            number = (d.versions.aggregate(n=Max("version"))["n"] or 0) + 1
            promoted = decision == UpdateDecision.PROMOTED
            DeploymentVersion.objects.create(
                deployment=d, version=number, origin=VersionOrigin.UPDATE, decision=decision,
                weights_file=str(weights_path.relative_to(settings.DATA_DIR)),
                memory_file=str(memory_path.relative_to(settings.DATA_DIR)), memory_size=memory_size,
                validation_accuracy=validation_accuracy, metrics={"update": update.number, **metrics},
                served_at=timezone.now() if promoted else None, mlflow_version=mlflow_version)
            if promoted:
                d.champion_version = number
                d.save(update_fields=["champion_version"])
            else:
                update_release_batches(update=update)
            if not self.job.update(candidate_version=number, decision=decision, reason=reason, metrics=metrics,
                                   cost=cost):
                raise JobSuperseded()
            self.update.candidate_version, self.update.decision, self.update.reason = number, decision, reason
            deployment_event_record(deployment=d, type="validated", payload={
                "update": update.number, "decision": decision, "reason": reason, "candidate_version": number,
                "champion_version": d.champion_version, "champion_accuracy": metrics["champion"]["union"],
                "candidate_accuracy": metrics["candidate"]["union"], "cost": cost})
        return number
