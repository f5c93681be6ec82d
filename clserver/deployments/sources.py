"""Where a deployment's version 1 comes from: a completed experiment, or a registered model and a dataset."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from claas_site.errors import InvalidInput, NotFound
from claas_site.params import keys_only
from clserver.deployments import data
from clserver.deployments.options import object_or_empty
from clserver.experiments.options import validate_name
from clserver.models import Dataset, Experiment, JobStatus

# A registered model's `reference` dataset is split like a benchmark: train part, test part.
REFERENCE_TEST_SIZE = 0.2
DATA_SEED = 0
SOURCE_CHAIN_MAX = 100


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


def source_resolve(*, owner: Any, raw: Any) -> SourceData:
    """The source named by a create request's `source`, loaded."""
    raw = object_or_empty(raw, where="source")
    if "exp_name" in raw:
        keys_only(raw, allowed=("exp_name",), where="source")
        return _source_experiment(owner=owner, name=raw["exp_name"])
    if "registered" in raw:
        keys_only(raw, allowed=("registered", "version", "reference"), where="source")
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

