"""Deployments: create from an experiment or a registered model, predict, ingest with drift checks,
trigger updates, roll back, delete (services), and read them (selectors)."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Sum
from django.utils import timezone

from claas_site.errors import Conflict, InvalidInput, NotFound
from claas_site.lazy import lazy_import
from claas_site.params import Param
from claas_site.quotas import quota_count_check, quota_stored_bytes_check
from clserver.deployments import data
from clserver.serving import cache as serving
from clserver.drift import detectors as drift
from claas_site import tracking
from clserver.deployments.models import (
    Deployment,
    DeploymentBatch,
    DeploymentEvent,
    DeploymentUpdate,
    DeploymentVersion,
    DriftCheck,
    UpdateDecision,
    UpdateTrigger,
    VersionOrigin,
)
from clserver.experiments.events import event_as_message, group_publish
from clserver.models import ACTIVE_STATUSES, Dataset, Experiment, JobStatus
from clserver.experiments.options import TRAINING_PARAMS, validate_device, validate_name
from clserver.training.strategies import OPTIMIZERS, STRATEGIES

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")

logger = logging.getLogger(__name__)

CREATE_KEYS = ("name", "source", "detector", "update")
# The validation set is a class-balanced sample of the source's test data, at most this big.
VALIDATION_MAX = 2000
# A registered model's `reference` dataset is split like a benchmark: train part, test part.
REFERENCE_TEST_SIZE = 0.2
DATA_SEED = 0
# GET /api/deployments/<name> lists this many of the latest drift checks (all are stored).
DETAIL_CHECKS = 200
SOURCE_CHAIN_MAX = 100

# Strategies an update cannot use: they do not continue from the champion's weights.
UPDATE_EXCLUDED = {
    "joint_training": "it trains offline on a whole stream at once",
    "gdumb": "it retrains from scratch on its memory",
    "ensemble": "it grows one model per experience, which a single served model cannot be",
}
UPDATE_PARAMS = (
    Param("trigger", "str", UpdateTrigger.DRIFT.value, "When an update starts by itself.",
          choices=[t.value for t in UpdateTrigger]),
    Param("min_samples", "int", 200, "Labelled samples that must be buffered before an update starts.",
          min=1, max=10_000_000),
    Param("every_n_samples", "int", 1000, "With trigger every_n_samples: buffered samples that start one.",
          min=1, max=10_000_000),
    Param("tolerance", "float", 0.0, "The candidate is promoted when its validation accuracy is at least the "
          "champion's minus this.", min=0.0, max=1.0),
    Param("validation_fraction", "float", 0.2, "Fraction of the buffered data held out to validate on.",
          min=0.05, max=0.5),
    Param("memory_size", "int", 500, "Samples in the replay memory.", min=0, max=1_000_000),
    Param("memory_policy", "str", "reservoir", "How the memory is refreshed after a promotion: a uniform "
          "sample of all data seen (reservoir) or the same per class (class_balanced).",
          choices=data.MEMORY_POLICIES),
)
UPDATE_KEYS = tuple(p.name for p in UPDATE_PARAMS) + ("strategy", "training")
DEFAULT_UPDATE_STRATEGY = {"name": "replay", "params": {}}


# --- paths -------------------------------------------------------------------------------------
def deployment_dir(deployment: Deployment) -> Path:
    """Detector, validation set, versions (weights + memory) and the buffer of one deployment."""
    return settings.DEPLOYMENT_DIR / str(deployment.owner_id) / str(deployment.pk)


def data_path(relative: str) -> Path:
    return settings.DATA_DIR / relative


def _relative(path: Path) -> str:
    return str(path.relative_to(settings.DATA_DIR))


def _key(deployment: Deployment) -> tuple:
    return (deployment.pk, deployment.created_at.timestamp())


def registered_name(deployment: Deployment) -> str:
    return f"{deployment.owner.username}.deploy.{deployment.name}"


# --- events --------------------------------------------------------------------------------------
def deployment_group(*, owner_id: int, name: str) -> str:
    # Group names allow only ASCII alphanumerics, hyphens, underscores and periods.
    return f"dep.{owner_id}.{name}"[:99]


def deployment_event_record(*, deployment: Deployment, type: str, payload: dict[str, Any]) -> DeploymentEvent:
    """Store an event and push it to the deployment's websocket group (after commit)."""
    event = DeploymentEvent.objects.create(deployment=deployment, type=type, payload=payload)
    group = deployment_group(owner_id=deployment.owner_id, name=deployment.name)
    transaction.on_commit(lambda: group_publish(group, event_as_message(event)))
    return event


# --- selectors -----------------------------------------------------------------------------------
def deployment_list(*, owner: Any) -> QuerySet[Deployment]:
    return Deployment.objects.filter(owner=owner)


def deployment_get(*, owner: Any, name: str) -> Deployment:
    deployment = Deployment.objects.filter(owner=owner, name=name).select_related("owner").first()
    if deployment is None:
        raise NotFound(f"You have no deployment named '{name}'.")
    return deployment


def deployment_buffered(*, deployment: Deployment) -> int:
    """Labelled samples waiting for an update."""
    total = deployment.batches.filter(update__isnull=True).aggregate(n=Sum("n_samples"))["n"]
    return int(total or 0)


def deployment_events(*, deployment: Deployment, after: int = 0, limit: int = 1000) -> QuerySet[DeploymentEvent]:
    return deployment.events.filter(id__gt=after).order_by("id")[:limit]


def check_as_dict(check: DriftCheck) -> dict[str, Any]:
    # `number` counts within the deployment; the primary key is a global sequence and stays inside.
    return {"id": check.number, "created_at": check.created_at, "detector": check.detector,
            "n_samples": check.n_samples, "is_drift": check.is_drift, "p_val": check.p_val,
            "distance": check.distance, "threshold": check.threshold,
            "champion_version": check.champion_version, "details": check.details}


def update_as_dict(update: DeploymentUpdate) -> dict[str, Any]:
    metrics = update.metrics or {}
    return {
        "id": update.number, "status": update.outcome, "job_status": update.status,
        "decision": update.decision or None,
        "trigger": update.trigger, "reason": update.reason or None, "error": update.error or None,
        "base_version": update.base_version, "candidate_version": update.candidate_version,
        "n_samples": update.n_samples,
        "champion_accuracy": metrics.get("champion", {}).get("union"),
        "candidate_accuracy": metrics.get("candidate", {}).get("union"),
        "metrics": metrics, "cost": update.cost, "options": update.options, "attempts": update.attempts,
        "drift_check": update.drift_check.number if update.drift_check_id else None,
        "created_at": update.created_at, "started_at": update.started_at, "finished_at": update.finished_at,
    }


def version_as_dict(version: DeploymentVersion, *, champion: int, challenger: int | None) -> dict[str, Any]:
    aliases = (["champion"] if version.version == champion else []) + (
        ["challenger"] if version.version == challenger else [])
    return {
        "version": version.version, "origin": version.origin, "decision": version.decision or None,
        "is_champion": version.version == champion, "aliases": aliases,
        "validation_accuracy": version.validation_accuracy, "metrics": version.metrics,
        "memory_size": version.memory_size, "served_at": version.served_at,
        "mlflow_version": version.mlflow_version or None, "created_at": version.created_at,
    }


def challenger_version(*, deployment: Deployment) -> int | None:
    """The latest rejected candidate (MLflow alias `challenger`)."""
    rejected = deployment.versions.filter(decision=UpdateDecision.REJECTED).order_by("-version").first()
    return rejected.version if rejected else None


def deployment_summary(*, deployment: Deployment) -> dict[str, Any]:
    last = deployment.drift_checks.order_by("-id").first()
    return {
        "name": deployment.name, "source": deployment.source, "champion_version": deployment.champion_version,
        "detector": deployment.detector, "update": deployment.update_options,
        "n_drift_checks": deployment.drift_checks.count(),
        "last_drift_check": check_as_dict(last) if last else None,
        "n_updates": deployment.updates.count(), "samples_seen": deployment.samples_seen,
        "created_at": deployment.created_at,
    }


def deployment_detail(*, deployment: Deployment) -> dict[str, Any]:
    user = deployment.owner.username
    champion = deployment.champion_version
    challenger = challenger_version(deployment=deployment)
    checks = list(deployment.drift_checks.order_by("-id")[:DETAIL_CHECKS])[::-1]
    versions = [version_as_dict(v, champion=champion, challenger=challenger)
                for v in deployment.versions.order_by("version")]
    return {
        **deployment_summary(deployment=deployment),
        "username": user,
        "champion": next((v for v in versions if v["version"] == champion), None),
        "buffered_samples": deployment_buffered(deployment=deployment),
        "drift_pending": deployment.drift_pending,
        "source_train_samples": deployment.source_train_samples,
        "drift_checks": [check_as_dict(c) for c in checks],
        "versions": versions,
        "updates": [update_as_dict(u) for u in deployment.updates.select_related("drift_check").order_by("id")],
        "mlflow": {"registered_name": registered_name(deployment)},
        "urls": {
            "predict": f"/api/deployments/{deployment.name}/predict",
            "ingest": f"/api/deployments/{deployment.name}/ingest",
            "update": f"/api/deployments/{deployment.name}/update",
            "rollback": f"/api/deployments/{deployment.name}/rollback",
            "events": f"/api/deployments/{deployment.name}/events",
            "websocket": f"/ws/deployments/{user}/{deployment.name}/",
        },
    }


# --- options -------------------------------------------------------------------------------------
def _only(obj: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise InvalidInput(f"{where} has unknown key '{unknown[0]}' (allowed: {', '.join(allowed)}).",
                           details={where: {"unknown": unknown}})


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be an object.", details={where: type(value).__name__})
    return value


def update_options(*, raw: Any) -> dict[str, Any]:
    """Validate `update` options; the result has every default filled."""
    raw = _object(raw, "update")
    _only(raw, UPDATE_KEYS, "update")
    out = {p.name: (p.coerce(raw[p.name], "update") if p.name in raw else p.default) for p in UPDATE_PARAMS}
    strategy = _object(raw.get("strategy"), "update.strategy") or dict(DEFAULT_UPDATE_STRATEGY)
    _only(strategy, ("name", "params"), "update.strategy")
    entry = STRATEGIES.get(strategy.get("name", "replay"), "update.strategy.name")
    if entry.name in UPDATE_EXCLUDED:
        raise InvalidInput(f"update.strategy '{entry.name}' cannot update a deployment: "
                           f"{UPDATE_EXCLUDED[entry.name]}.", details={"update.strategy.name": entry.name})
    given = _object(strategy.get("params"), "update.strategy.params")
    params = entry.validate(given, "update.strategy.params")
    if "mem_size" in params and "mem_size" not in given and out["memory_size"] > 0:
        # Replay draws from the deployment's memory: by default, all of it.
        params["mem_size"] = out["memory_size"]
    out["strategy"] = {"name": entry.name, "params": params}
    out["training"] = training_options(raw=raw.get("training"))
    return out


def training_options(*, raw: Any) -> dict[str, Any]:
    raw = _object(raw, "update.training")
    _only(raw, tuple(p.name for p in TRAINING_PARAMS) + ("optimizer",), "update.training")
    training = {p.name: (p.coerce(raw[p.name], "update.training") if p.name in raw else p.default)
                for p in TRAINING_PARAMS}
    validate_device(training["device"])
    opt_raw = _object(raw.get("optimizer"), "update.training.optimizer") or {"name": "sgd"}
    entry = OPTIMIZERS.get(opt_raw.get("name", "sgd"), "update.training.optimizer.name")
    params = entry.validate({k: v for k, v in opt_raw.items() if k != "name"}, "update.training.optimizer")
    training["optimizer"] = {"name": entry.name, **params}
    return training


def update_options_override(*, base: dict[str, Any], raw: Any) -> dict[str, Any]:
    """The deployment's options with a manual update's `strategy` / `training` laid over them."""
    raw = _object(raw, "request body")
    _only(raw, ("strategy", "training"), "request body")
    merged: dict[str, Any] = {k: v for k, v in base.items() if k not in ("strategy", "training")}
    if "strategy" in raw:
        merged["strategy"] = raw["strategy"]
    else:
        merged["strategy"] = base["strategy"]
    training = dict(base["training"])
    training.update(_object(raw.get("training"), "training"))
    merged["training"] = training
    return update_options(raw=merged)


# --- sources -------------------------------------------------------------------------------------
@dataclass
class SourceData:
    """What version 1 is made of, with the data its reference, validation set and memory come from."""

    source: dict[str, Any]
    architecture: str
    params: dict[str, Any]
    weights: Path
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_samples: int
    experiment: Experiment | None = None
    model_version: Any = None


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def _source_resolve(*, owner: Any, raw: Any) -> SourceData:
    raw = _object(raw, "source")
    if "exp_name" in raw:
        _only(raw, ("exp_name",), "source")
        return _source_experiment(owner=owner, name=raw["exp_name"])
    if "registered" in raw:
        _only(raw, ("registered", "version", "reference"), "source")
        return _source_registered(owner=owner, raw=raw)
    raise InvalidInput("source must be {\"exp_name\": ...} (a completed experiment) or {\"registered\": ..., "
                       "\"version\": ..., \"reference\": ...} (a registered model version and a dataset).",
                       details={"source": "required"})


def _source_experiment(*, owner: Any, name: Any) -> SourceData:
    from clserver.training.benchmarks import benchmark_source
    from clserver.experiments.services import experiment_model_path

    name = validate_name(name, "source.exp_name")
    experiment = Experiment.objects.filter(owner=owner, name=name).first()
    if experiment is None:
        raise InvalidInput(f"source.exp_name: you have no experiment named '{name}'.",
                           details={"source.exp_name": name})
    if experiment.status != JobStatus.COMPLETED:
        raise InvalidInput(f"source.exp_name: experiment '{name}' is {experiment.status}, not completed.",
                           details={"source.exp_name": experiment.status})
    weights = experiment_model_path(experiment=experiment)
    if weights is None:
        raise InvalidInput(f"source.exp_name: experiment '{name}' has no final model file.",
                           details={"source.exp_name": name})
    bench = dict(experiment.options["benchmark"])
    _, source = benchmark_source(name=bench.pop("name"), params=bench, owner=owner)
    stream = source.load()
    x_train = _flat(np.concatenate([x for x, _ in stream.train]))
    y_train = np.concatenate([y for _, y in stream.train]).astype(np.int64)
    x_test = _flat(np.concatenate([x for x, _ in stream.test]))
    y_test = np.concatenate([y for _, y in stream.test]).astype(np.int64)
    model = experiment.options["model"]
    return SourceData({"exp_name": name}, model["architecture"], dict(model["params"]), weights,
                      x_train, y_train, x_test, y_test, _chain_train_samples(experiment, len(y_train)),
                      experiment=experiment)


def _chain_train_samples(experiment: Experiment, own: int) -> int:
    """Training samples behind a model: its experiment's, plus those of the experiments it continued."""
    from clserver.training.benchmarks import benchmark_source

    total, current = own, experiment.source
    for _ in range(SOURCE_CHAIN_MAX):
        if current is None:
            break
        bench = dict(current.options["benchmark"])
        try:
            total += benchmark_source(name=bench.pop("name"), params=bench, owner=current.owner)[1].n_train
        except InvalidInput:  # e.g. its dataset was deleted since: count what is known
            pass
        current = current.source
    return total


def _source_registered(*, owner: Any, raw: dict[str, Any]) -> SourceData:
    from modelfactory.selectors import model_version_get

    name, version = raw["registered"], raw.get("version")
    if not isinstance(name, str) or not name:
        raise InvalidInput("source.registered must be the name of one of your registered models.")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidInput("source.version must be a positive integer (or left out for the latest).",
                           details={"source.version": version})
    reference = raw.get("reference")
    if not isinstance(reference, str) or not reference:
        raise InvalidInput("source.reference is required with a registered model: the name of an uploaded "
                           "dataset of the model's inputs and labels (reference sample, validation set, memory).",
                           details={"source.reference": "required"})
    try:
        mv = model_version_get(owner=owner, name=name, version=version)
    except NotFound as exc:
        raise InvalidInput(f"source.registered: {exc.message}", details={"source.registered": name}) from exc
    dataset = Dataset.objects.filter(owner=owner, name=reference).first()
    if dataset is None:
        raise InvalidInput(f"source.reference: you have no dataset named '{reference}'.",
                           details={"source.reference": reference})
    params = dict(mv.model.params)
    n_features = math.prod(params["input_shape"])
    if dataset.n_features != n_features:
        raise InvalidInput(f"source.reference: dataset '{reference}' has {dataset.n_features} features but the "
                           f"model takes {n_features}.", details={"source.reference": dataset.n_features})
    arrays = data.npz_read(settings.DATA_DIR / dataset.file)
    x, y = _flat(arrays["x"]), arrays["y"].astype(np.int64)
    if y.max() >= params["num_classes"]:
        raise InvalidInput(f"source.reference: dataset '{reference}' has label {int(y.max())} but the model has "
                           f"{params['num_classes']} classes.", details={"source.reference": int(y.max())})
    from clserver.training.streams import stratified_split

    tr, te = stratified_split(y, REFERENCE_TEST_SIZE, DATA_SEED)
    return SourceData({"registered": mv.model.name, "version": mv.version, "reference": reference},
                      mv.model.architecture, params, settings.DATA_DIR / mv.weights_file,
                      x[tr], y[tr], x[te], y[te], len(tr), model_version=mv)


# --- create --------------------------------------------------------------------------------------
def deployment_create(*, owner: Any, raw: Any) -> Deployment:
    """Validate, fit the detector, sample reference / validation / memory, store version 1.

    The files are written to a staging folder first and moved into place in the same
    transaction that creates the rows, so a failure leaves neither rows nor files.
    """
    if not isinstance(raw, dict):
        raise InvalidInput("The request body must be a JSON object.")
    _only(raw, CREATE_KEYS, "request body")
    name = validate_name(raw.get("name"), "name")
    if Deployment.objects.filter(owner=owner, name=name).exists():
        raise Conflict(f"A deployment named '{name}' exists; delete it first or choose another name.")
    quota_count_check(owner=owner, kind="deployments")
    detector_opts = drift.detector_options(raw=raw.get("detector"))
    update_opts = update_options(raw=raw.get("update"))
    src = _source_resolve(owner=owner, raw=raw.get("source"))

    try:
        champion = serving.model_load(architecture=src.architecture, params=src.params,
                                      weights_file=_relative_or_abs(src.weights))
    except (RuntimeError, OSError, KeyError) as exc:
        raise InvalidInput(f"The source model's weights do not load into its architecture: {exc}".splitlines()[0])
    rng = np.random.RandomState(DATA_SEED)
    n_ref = min(detector_opts["n_reference"], len(src.y_train))
    x_ref = src.x_train[np.sort(rng.choice(len(src.y_train), n_ref, replace=False))]
    val_idx = data.class_balanced_indices(src.y_test, VALIDATION_MAX, rng)
    x_val, y_val = src.x_test[val_idx], src.y_test[val_idx]
    memory = data.memory_initial(x=src.x_train, y=src.y_train, size=update_opts["memory_size"],
                                 num_classes=src.params["num_classes"], rng=rng)
    # What version 1 will store (weights, memory, validation set, the detector's reference, and the
    # weights' MLflow copy when that store is local) counts before anything is written.
    mlflow_copy = src.weights.stat().st_size if tracking.user_artifact_dir(username=owner.username) else 0
    quota_stored_bytes_check(owner=owner, adding=src.weights.stat().st_size + mlflow_copy + x_ref.nbytes
                             + x_val.nbytes + y_val.nbytes + memory.x.nbytes + memory.y.nbytes)
    detector = drift.detector_fit(options=detector_opts, x_ref=x_ref, model=champion,
                                  input_shape=src.params["input_shape"])

    staging = settings.DEPLOYMENT_DIR / str(owner.pk) / f".staging-{uuid.uuid4().hex}"
    final: Path | None = None
    try:
        (staging / "versions").mkdir(parents=True)
        shutil.copyfile(src.weights, staging / "versions" / "v1.pt")
        data.memory_write(staging / "versions" / "v1-memory.npz", memory)
        data.npz_write(staging / "validation.npz", x=x_val, y=y_val)
        drift.detector_save(detector, staging / "detector")
        validation_accuracy = serving.accuracy(champion, x_val, y_val)
        with transaction.atomic():
            # Decided with the user's row locked; the staging folder is counted as it is on disk now.
            quota_count_check(owner=owner, kind="deployments")
            quota_stored_bytes_check(owner=owner, adding=mlflow_copy)
            deployment = Deployment.objects.create(
                owner=owner, name=name, source=src.source, source_experiment=src.experiment,
                source_model_version=src.model_version, architecture=src.architecture, model_params=src.params,
                detector=detector_opts, update_options=update_opts, champion_version=1,
                source_train_samples=src.train_samples,
            )
            final = deployment_dir(deployment)
            if final.exists():  # a row id reused after a crash: its old files are orphans
                shutil.rmtree(final)
            staging.rename(final)
            version = DeploymentVersion.objects.create(
                deployment=deployment, version=1, origin=VersionOrigin.SOURCE,
                weights_file=_relative(final / "versions" / "v1.pt"),
                memory_file=_relative(final / "versions" / "v1-memory.npz"), memory_size=len(memory),
                validation_accuracy=validation_accuracy,
                metrics={"validation_samples": int(len(y_val)), "reference_samples": int(n_ref)},
                served_at=timezone.now(),
            )
            deployment_event_record(deployment=deployment, type="created", payload={
                "champion_version": 1, "validation_accuracy": validation_accuracy, "detector": detector_opts["name"]})
            transaction.on_commit(lambda: _version_register_enqueue(version.pk))
    except IntegrityError:
        _remove(staging, final)
        raise Conflict(f"A deployment named '{name}' was created at the same time; choose another name.")
    except BaseException:
        _remove(staging, final)
        raise
    serving.detector_put(deployment_key=_key(deployment), detector=_LoadedDetector(detector, 0))
    return deployment


def _relative_or_abs(path: Path) -> str:
    try:
        return _relative(path)
    except ValueError:
        return str(path)


def _remove(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _version_register_enqueue(version_id: int) -> None:
    from clserver.deployments.tasks import deployment_version_register_enqueue

    deployment_version_register_enqueue(version_id)


def _aliases_sync_enqueue(deployment_id: int) -> None:
    from clserver.deployments.tasks import deployment_aliases_sync_enqueue

    deployment_aliases_sync_enqueue(deployment_id)


# --- predict -------------------------------------------------------------------------------------
def deployment_predict(*, deployment: Deployment, inputs: Any) -> dict[str, Any]:
    """The champion's predictions, from a model cached per (deployment, version)."""
    x = data.inputs_parse(inputs=inputs, input_shape=deployment.model_params["input_shape"])
    version = deployment.versions.get(version=deployment.champion_version)
    model = serving.model_cached(deployment_key=_key(deployment), version=version.version,
                                 architecture=deployment.architecture, params=deployment.model_params,
                                 weights_file=version.weights_file)
    predictions = serving.model_predict(model, x)
    return {"predictions": predictions.tolist(), "model_version": version.version}


# --- ingest --------------------------------------------------------------------------------------
@dataclass
class _LoadedDetector:
    detector: Any
    state: int  # the deployment's detector_state this object reflects (online detectors)


def _detector_path(deployment: Deployment) -> Path:
    return deployment_dir(deployment) / "detector"


@contextlib.contextmanager
def _detector_lock(deployment: Deployment) -> Iterator[None]:
    """Online detectors carry state between batches: one check at a time, across processes."""
    path = deployment_dir(deployment) / "detector.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _drift_check(deployment: Deployment, x: np.ndarray) -> drift.CheckResult:
    path = _detector_path(deployment)
    loaded = serving.detector_cached(deployment_key=_key(deployment),
                                     load=lambda: _LoadedDetector(drift.detector_load(path), -1))
    if drift.detector_kind(deployment.detector) != "online":
        return drift.detector_check(detector=loaded.detector, options=deployment.detector, x=x)
    with _detector_lock(deployment):
        state = Deployment.objects.filter(pk=deployment.pk).values_list("detector_state", flat=True).first()
        if loaded.state != state:
            drift.detector_state_load(loaded.detector, path / "state")
        result = drift.detector_check(detector=loaded.detector, options=deployment.detector, x=x)
        drift.detector_state_save(loaded.detector, path / "state")
        Deployment.objects.filter(pk=deployment.pk).update(detector_state=F("detector_state") + 1)
        loaded.state = state + 1
    return result


def deployment_ingest(*, deployment: Deployment, inputs: Any, labels: Any) -> dict[str, Any]:
    """Check the batch for drift, buffer it, and start an update when the trigger fires."""
    x = data.inputs_parse(inputs=inputs, input_shape=deployment.model_params["input_shape"])
    y = data.labels_parse(labels=labels, n_rows=len(x), num_classes=deployment.model_params["num_classes"])
    # The batch stays in the buffer until an update takes it: it counts like any stored file.
    quota_stored_bytes_check(owner=deployment.owner, adding=x.nbytes + y.nbytes)
    result = _drift_check(deployment, x)
    batch_path = deployment_dir(deployment) / "buffer" / f"{uuid.uuid4().hex}.npz"
    data.npz_write(batch_path, x=x, y=y)
    try:
        with transaction.atomic():
            d = Deployment.objects.select_for_update().select_related("owner").get(pk=deployment.pk)
            check = DriftCheck.objects.create(
                deployment=d, detector=d.detector["name"], n_samples=len(y), is_drift=result.is_drift,
                p_val=result.p_val, distance=result.distance, threshold=result.threshold,
                champion_version=d.champion_version, details=result.details)
            DeploymentBatch.objects.create(deployment=d, file=_relative(batch_path), n_samples=len(y),
                                           drift_check=check)
            d.samples_seen += len(y)
            d.drift_pending = d.drift_pending or result.is_drift
            d.save(update_fields=["samples_seen", "drift_pending"])
            payload = {k: v for k, v in check_as_dict(check).items() if k not in ("id", "created_at")}
            deployment_event_record(deployment=d, type="drift_check", payload={"check_id": check.number, **payload})
            update, message = _trigger(d, check)
    except BaseException:
        batch_path.unlink(missing_ok=True)
        raise
    return {
        "drift": {"is_drift": result.is_drift, "p_val": result.p_val, "distance": result.distance,
                  "threshold": result.threshold, "detector": deployment.detector["name"], "check_id": check.number,
                  "details": result.details},
        "update": {"id": update.number, "status": update.outcome} if update else None,
        "buffered": deployment_buffered(deployment=deployment),
        "trigger": message,
    }


def _trigger(d: Deployment, check: DriftCheck) -> tuple[DeploymentUpdate | None, str]:
    """Decide, inside the ingest transaction, whether this batch starts an update."""
    opts = d.update_options
    buffered = deployment_buffered(deployment=d)
    trigger, minimum = opts["trigger"], opts["min_samples"]
    if trigger == UpdateTrigger.MANUAL:
        return None, (f"Updates are manual: {buffered} labelled samples are buffered; start one with "
                      f"POST /api/deployments/{d.name}/update.")
    if trigger == UpdateTrigger.DRIFT:
        if not d.drift_pending:
            return None, f"No drift; {buffered} labelled samples wait in the buffer."
        needed = minimum
    else:
        needed = max(minimum, opts["every_n_samples"])
    if buffered < needed:
        what = "Drift was detected but only" if trigger == UpdateTrigger.DRIFT else "Only"
        return None, f"{what} {buffered} labelled samples are buffered; an update starts once {needed} are."
    active = d.updates.filter(status__in=ACTIVE_STATUSES).first()
    if active is not None:
        return None, (f"Update {active.number} is still {active.status}; these samples wait in the buffer "
                      "for the next one.")
    update = _update_start(d, trigger=trigger, options=opts, drift_check=check)
    why = "Drift detected" if trigger == UpdateTrigger.DRIFT else f"{buffered} samples since the last update"
    return update, f"{why} with {update.n_samples} labelled samples buffered: update {update.number} is queued."


def _update_start(d: Deployment, *, trigger: str, options: dict[str, Any],
                  drift_check: DriftCheck | None) -> DeploymentUpdate:
    """Queue an update that takes every buffered batch (call inside a transaction)."""
    from clserver.deployments.tasks import deployment_update_enqueue

    batches = d.batches.filter(update__isnull=True)
    n = int(batches.aggregate(n=Sum("n_samples"))["n"] or 0)
    update = DeploymentUpdate.objects.create(
        deployment=d, trigger=trigger, options=options, base_version=d.champion_version, n_samples=n,
        samples_seen_total=d.source_train_samples + d.samples_seen, drift_check=drift_check,
        status=JobStatus.QUEUED, queued_at=timezone.now())
    batches.update(update=update)
    d.drift_pending = False
    d.save(update_fields=["drift_pending"])
    deployment_event_record(deployment=d, type="update", payload=update_event_payload(update))
    transaction.on_commit(lambda: deployment_update_enqueue(update.pk))
    return update


def update_event_payload(update: DeploymentUpdate) -> dict[str, Any]:
    return {"update": update.number, "status": update.outcome, "trigger": update.trigger,
            "n_samples": update.n_samples, "base_version": update.base_version,
            "candidate_version": update.candidate_version, "reason": update.reason or None}


# --- manual update, rollback, delete -----------------------------------------------------------
def deployment_update_request(*, deployment: Deployment, raw: Any) -> DeploymentUpdate:
    """POST .../update: start an update now, optionally with other strategy or training options."""
    options = update_options_override(base=deployment.update_options, raw=raw)
    with transaction.atomic():
        d = Deployment.objects.select_for_update().select_related("owner").get(pk=deployment.pk)
        active = d.updates.filter(status__in=ACTIVE_STATUSES).first()
        if active is not None:
            raise Conflict(f"Update {active.number} of deployment '{d.name}' is already {active.status}.")
        buffered = deployment_buffered(deployment=d)
        if buffered < options["min_samples"]:
            raise Conflict(f"Only {buffered} labelled samples are buffered; an update needs at least "
                           f"{options['min_samples']} (update.min_samples). Ingest more data first.",
                           details={"buffered": buffered, "min_samples": options["min_samples"]})
        return _update_start(d, trigger=UpdateTrigger.MANUAL, options=options, drift_check=None)


def deployment_update_cancel(*, deployment: Deployment, update_id: int) -> DeploymentUpdate:
    """Cancel the deployment's update number `update_id` (its number within the deployment, as shown)."""
    with transaction.atomic():
        update = DeploymentUpdate.objects.select_for_update().filter(deployment=deployment, number=update_id).first()
        if update is None:
            raise NotFound(f"Deployment '{deployment.name}' has no update {update_id}.")
        if update.status == JobStatus.QUEUED:
            update.status = JobStatus.CANCELLED
            update.finished_at = timezone.now()
            update.save(update_fields=["status", "finished_at"])
            update_release_batches(update=update)
            deployment_event_record(deployment=deployment, type="update", payload=update_event_payload(update))
        elif update.status == JobStatus.RUNNING:
            update.cancel_requested = True
            update.save(update_fields=["cancel_requested"])
        else:
            raise Conflict(f"Update {update_id} is {update.outcome}; only queued or running updates can be "
                           "cancelled.")
    return update


def update_release_batches(*, update: DeploymentUpdate) -> int:
    """Put an update's batches back in the buffer (it failed, was cancelled or was rejected)."""
    return DeploymentBatch.objects.filter(update=update).update(update=None)


def deployment_rollback(*, deployment: Deployment, version: Any) -> Deployment:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput("version must be a positive integer: the version to serve again.",
                           details={"version": str(version)[:50]})
    with transaction.atomic():
        d = Deployment.objects.select_for_update().select_related("owner").get(pk=deployment.pk)
        target = d.versions.filter(version=version).first()
        served = list(d.versions.filter(served_at__isnull=False).values_list("version", flat=True))
        if target is None:
            raise InvalidInput(f"Deployment '{d.name}' has no version {version}; versions that served: "
                               f"{', '.join(map(str, served))}.", details={"version": version})
        if target.served_at is None:
            raise Conflict(f"Version {version} was rejected by validation and never served; roll back to one "
                           f"that served: {', '.join(map(str, served))}.", details={"version": version})
        if d.champion_version != version:
            previous = d.champion_version
            d.champion_version = version
            d.save(update_fields=["champion_version"])
            deployment_event_record(deployment=d, type="rollback",
                                    payload={"from_version": previous, "champion_version": version})
            transaction.on_commit(lambda: _aliases_sync_enqueue(d.pk))
    return d


def deployment_delete(*, deployment: Deployment) -> None:
    """Delete a deployment, its files, and its MLflow runs, their files and its registered model."""
    with transaction.atomic():
        d = Deployment.objects.select_for_update().get(pk=deployment.pk)
        active = d.updates.filter(status__in=ACTIVE_STATUSES).first()
        if active is not None:
            raise Conflict(f"Update {active.number} of deployment '{d.name}' is {active.status}; cancel it first.")
        folder, key = deployment_dir(d), _key(d)
        username, registered = d.owner.username, registered_name(d)
        d.delete()
        transaction.on_commit(lambda: (shutil.rmtree(folder, ignore_errors=True), serving.deployment_forget(key)))
        # Its MLflow copies count against the user's quota: they go too.
        transaction.on_commit(lambda: tracking.runs_forget(username=username, tag="claas.deployment", value=d.name,
                                                           registered=registered))


# --- for the update job ------------------------------------------------------------------------------
def version_model(*, deployment: Deployment, version: DeploymentVersion) -> torch.nn.Module:
    return serving.model_load(architecture=deployment.architecture, params=deployment.model_params,
                              weights_file=version.weights_file)
