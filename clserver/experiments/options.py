"""Validation of experiment options: fail at setup with the reason, never an hour into a run."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from django.conf import settings

from claas_site.errors import ApplicationError, InvalidInput
from claas_site.params import Param, keys_only
from clserver.training.benchmarks import Source, benchmark_source
from clserver.training.early_stopping_options import EARLY_STOPPING, early_stopping_check
from clserver.models import Experiment, JobStatus
from clserver.names import NAME_MAX_LENGTH, NAME_PATTERN
from clserver.training.strategies import OPTIMIZERS, STRATEGIES, memory_size
from modelfactory.architectures import architecture_params
from modelfactory.models import ModelVersion

TOP_KEYS = ("exp_name", "model", "benchmark", "strategy", "training", "from_experiment")
NAME_RE = re.compile(NAME_PATTERN)
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$")

TRAINING_PARAMS = (
    Param("epochs", "int", 10, "Epochs per experience.", min=1, max=1000),
    Param("train_mb_size", "int", 32, "Training minibatch size.", min=1, max=65536),
    Param("eval_mb_size", "int", 256, "Evaluation minibatch size.", min=1, max=65536),
    Param("device", "str", "auto", "auto, cpu, cuda or cuda:N."),
    Param("seed", "int", 0, "Seed of weights, shuffling and sampling.", min=0, max=2**31 - 1),
    Param("deterministic", "bool", False, "The same results on every run on a GPU too (deterministic "
          "kernels; slower there). Training on the CPU repeats exactly anyway."),
    EARLY_STOPPING,
)
TRAINING_KEYS = tuple(p.name for p in TRAINING_PARAMS) + ("optimizer",)
DEFAULT_OPTIMIZER = "sgd"
# Not an option of the experiment: whether setup may replace one of the same name.
OVERWRITE = Param("overwrite", "bool", False, "Replace your experiment of this name (one that is not queued "
                  "or running and that nothing continues or deploys).")
DEFAULT_MODEL = {"architecture": "simple_mlp", "params": {"hidden_size": 128}}
DEFAULT_BENCHMARK = {"name": "split_digits", "n_experiences": 5, "seed": 1}
DEFAULT_STRATEGY = {"name": "replay", "params": {"mem_size": 200}}


@dataclass
class Validated:
    options: dict[str, Any]
    source: Source
    from_experiment: Experiment | None
    registered_version: ModelVersion | None


def validate_name(value: Any, field: str = "exp_name") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field} is required and must be a string.", details={field: "required"})
    if len(value) > NAME_MAX_LENGTH:
        raise InvalidInput(f"{field} may have at most {NAME_MAX_LENGTH} characters.", details={field: len(value)})
    if not NAME_RE.match(value):
        raise InvalidInput(f"{field} may contain only letters, digits, '_', '.' and '-'.", details={field: value})
    return value


def _object(raw: dict[str, Any], key: str, default: dict[str, Any]) -> dict[str, Any]:
    value = raw.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, dict):
        raise InvalidInput(f"{key} must be an object.", details={key: type(value).__name__})
    return value


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate_device(device: str) -> str:
    if not DEVICE_RE.match(device):
        raise InvalidInput("training.device must be auto, cpu, cuda or cuda:N.", details={"training.device": device})
    # In the scaled mode GPU workers live on other machines; the web process cannot see them.
    if device.startswith("cuda") and not settings.REDIS_URL:
        if not cuda_available():
            raise InvalidInput(f"training.device is '{device}' but this CLaaS installation has no CUDA device; "
                               "use 'auto' or 'cpu'.", details={"training.device": device})
        import torch

        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InvalidInput(f"training.device '{device}' does not exist; this machine has "
                               f"{torch.cuda.device_count()} CUDA device(s).", details={"training.device": device})
    return device


def _optimizer_object(value: Any) -> dict[str, Any]:
    # Left out (or empty) is the default optimizer, sgd with its defaults.
    if not value:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("training.optimizer must be an object.", details={"training.optimizer": str(value)[:50]})
    return value


def training_validate(*, raw: dict[str, Any], where: str,
                      optimizer_object: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Training options (an experiment's `training`, a deployment's `update.training`), defaults filled.

    `optimizer_object` turns the given `optimizer` into an object ({} for the default, sgd) or refuses it.
    """
    keys_only(raw, allowed=TRAINING_KEYS, where=where)
    training = {p.name: (p.coerce(raw[p.name], where) if p.name in raw else p.default) for p in TRAINING_PARAMS}
    validate_device(training["device"])
    early_stopping_check(early_stopping=training["early_stopping"], epochs=training["epochs"], where=where)
    opt_raw = optimizer_object(raw.get("optimizer"))
    entry = OPTIMIZERS.get(opt_raw.get("name", DEFAULT_OPTIMIZER), f"{where}.optimizer.name")
    params = entry.validate({k: v for k, v in opt_raw.items() if k != "name"}, f"{where}.optimizer")
    training["optimizer"] = {"name": entry.name, **params}
    return training


def _validate_model(raw_model: dict[str, Any], source: Source, owner: Any) -> tuple[dict[str, Any], ModelVersion | None]:
    if "registered" in raw_model:
        from modelfactory.selectors import model_version_get

        keys_only(raw_model, allowed=("registered", "version"), where="model")
        version = raw_model.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise InvalidInput("model.version must be a positive integer.", details={"model.version": version})
        try:
            mv = model_version_get(owner=owner, name=str(raw_model["registered"]), version=version)
        except ApplicationError as exc:
            raise InvalidInput(f"model.registered: {exc.message}", details={"model.registered": raw_model["registered"]})
        architecture, params = mv.model.architecture, dict(mv.model.params)
        normalized = {"registered": mv.model.name, "version": mv.version, "architecture": architecture,
                      "params": params}
    else:
        keys_only(raw_model, allowed=("architecture", "params"), where="model")
        params_in = raw_model.get("params") or {}
        if not isinstance(params_in, dict):
            raise InvalidInput("model.params must be an object.", details={"model.params": type(params_in).__name__})
        # Input shape and class count follow the benchmark unless given.
        params_in = {"input_shape": source.input_shape, "num_classes": source.n_classes, **params_in}
        architecture = raw_model.get("architecture", "simple_mlp")
        params = architecture_params(architecture=architecture, params=params_in)
        normalized, mv = {"architecture": architecture, "params": params}, None
    if math.prod(params["input_shape"]) != math.prod(source.input_shape):
        raise InvalidInput(
            f"model input_shape {params['input_shape']} does not fit the benchmark's inputs of shape "
            f"{source.input_shape}.", details={"model.params.input_shape": params["input_shape"]})
    if params["num_classes"] < source.n_classes:
        raise InvalidInput(
            f"model num_classes is {params['num_classes']} but the benchmark has {source.n_classes} classes.",
            details={"model.params.num_classes": params["num_classes"]})
    return normalized, mv


def overwrite_pop(*, raw: Any) -> tuple[Any, bool]:
    """The setup body without `overwrite`, and its value (false unless given)."""
    if not isinstance(raw, dict):
        return raw, OVERWRITE.default
    raw = dict(raw)
    overwrite = raw.pop(OVERWRITE.name, OVERWRITE.default)
    if not isinstance(overwrite, bool):
        raise InvalidInput("overwrite must be true or false.", details={"overwrite": str(overwrite)})
    return raw, overwrite


def options_validate(*, owner: Any, raw: Any) -> Validated:
    if not isinstance(raw, dict):
        raise InvalidInput("The request body must be a JSON object.")
    keys_only(raw, allowed=TOP_KEYS, where="options")
    exp_name = validate_name(raw.get("exp_name"))

    # from_experiment: continue another experiment's model and strategy state.
    source_exp = None
    if raw.get("from_experiment") is not None:
        source_name = validate_name(raw["from_experiment"], "from_experiment")
        source_exp = Experiment.objects.filter(owner=owner, name=source_name).first()
        if source_exp is None:
            raise InvalidInput(f"from_experiment: you have no experiment named '{source_name}'.",
                               details={"from_experiment": source_name})
        if source_exp.status != JobStatus.COMPLETED:
            raise InvalidInput(f"from_experiment: experiment '{source_name}' is {source_exp.status}, "
                               "not completed.", details={"from_experiment": source_exp.status})
        if source_name == exp_name:
            raise InvalidInput("from_experiment must name another experiment.", details={"from_experiment": source_name})

    bench_raw = _object(raw, "benchmark", DEFAULT_BENCHMARK)
    bench_params = {k: v for k, v in bench_raw.items() if k != "name"}
    bench_full, source = benchmark_source(name=bench_raw.get("name", "split_digits"), params=bench_params, owner=owner)
    benchmark = {"name": bench_raw.get("name", "split_digits"), **bench_full}

    if source_exp is not None:
        if "model" in raw and raw["model"] is not None:
            raise InvalidInput("model must be left out with from_experiment: the model continues from "
                               f"'{source_exp.name}'.", details={"model": "not allowed with from_experiment"})
        model_opts, registered = dict(source_exp.options["model"]), None
        params = model_opts["params"]
        if math.prod(params["input_shape"]) != math.prod(source.input_shape) or params["num_classes"] < source.n_classes:
            raise InvalidInput(f"from_experiment: the model of '{source_exp.name}' (input {params['input_shape']}, "
                               f"{params['num_classes']} classes) does not fit this benchmark.",
                               details={"from_experiment": source_exp.name})
    else:
        model_opts, registered = _validate_model(_object(raw, "model", DEFAULT_MODEL), source, owner)

    strat_raw = _object(raw, "strategy", DEFAULT_STRATEGY)
    keys_only(strat_raw, allowed=("name", "params"), where="strategy")
    strat_entry = STRATEGIES.get(strat_raw.get("name", "replay"), "strategy.name")
    strat_params = strat_entry.validate(strat_raw.get("params"), "strategy.params")
    mem = memory_size(name=strat_entry.name, params=strat_params, n_experiences=source.n_experiences)
    if mem > source.n_train:
        key = "mem_size" if "mem_size" in strat_params else "patterns_per_exp"
        raise InvalidInput(f"strategy.params.{key} is {mem} but the benchmark has only {source.n_train} "
                           "training samples.", details={f"strategy.params.{key}": mem})

    training = training_validate(raw=_object(raw, "training", {}), where="training",
                                 optimizer_object=_optimizer_object)

    options = {
        "exp_name": exp_name,
        "model": model_opts,
        "benchmark": benchmark,
        "strategy": {"name": strat_entry.name, "params": strat_params},
        "training": training,
        "from_experiment": source_exp.name if source_exp else None,
    }
    return Validated(options, source, source_exp, registered)
