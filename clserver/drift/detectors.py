"""The one boundary to alibi-detect: the drift-detector registry, fitting, checks, saving and loading.

alibi-detect is imported inside functions only (it takes seconds to import), always with
backend="pytorch" on the CPU, so a detector saved by one process loads in any other. Where it is not
installed, ks, mmd and lsdd are CLaaS's own (clserver/drift/own.py) and the others answer 400
(clserver/drift/implementation.py decides which).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from claas_site.errors import InvalidInput
from claas_site.lazy import lazy_import
from claas_site.params import Param, Registry
from clserver.drift import budget as drift_budget
from clserver.drift import implementation, own
from clserver.drift.checks import CheckResult, check_batch, check_online
from clserver.drift.budget import CHUNK_BYTES
from clserver.drift.fast import accelerate
from clserver.drift.preprocess import PREPROCESSORS  # noqa: F401  (listed and used here)

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")

# alibi-detect reports every saving and loading step at INFO; only its warnings matter here.
logging.getLogger("alibi_detect").setLevel(logging.WARNING)

# Each detector's memory formula is registered under the same name in clserver/drift/budget.py.
DETECTORS = Registry("detector")

BACKEND = "pytorch"
DEVICE = "cpu"
PREPROCESS_BATCH = 512
# Checks are seeded so that the same batch against the same reference gives the same answer.
CHECK_SEED = 0
FIT_SEED = 0
MAX_PERMUTATIONS = 10_000
MAX_BOOTSTRAPS = 100_000


# --- parameters --------------------------------------------------------------------------------
def _p_val() -> Param:
    return Param("p_val", "float", 0.05, "Significance level: a batch whose p-value falls below it is drift.",
                 min=1e-6, max=0.5)


def _n_reference(default: int = 500) -> Param:
    return Param("n_reference", "int", default, "Training inputs kept as the reference sample.", min=10,
                 max=20_000)


def _correction() -> Param:
    return Param("correction", "str", "bonferroni", "Multiple-testing correction over the features.",
                 choices=("bonferroni", "fdr"))


def _online() -> tuple[Param, ...]:
    return (
        Param("ert", "float", 200.0, "Expected run time: samples between false alarms without drift.",
              min=2.0, max=1e7),
        Param("window_size", "int", 20, "Test window: the most recent samples compared to the reference.",
              min=2, max=10_000),
    )


# --- the detectors -----------------------------------------------------------------------------
@DETECTORS.register(
    "ks", help="Kolmogorov-Smirnov test per feature, aggregated with a multiple-testing correction.",
    params=(_p_val(), _correction(), _n_reference()), kind="batch", feature_wise=True,
)
def ks(x_ref: np.ndarray, *, p_val: float, correction: str, preprocess_fn: Any, **_: Any) -> Any:
    if not implementation.uses_alibi("ks"):
        return own.KS(x_ref, p_val=p_val, correction=correction, preprocess_fn=preprocess_fn)
    from alibi_detect.cd import KSDrift

    return KSDrift(x_ref, p_val=p_val, correction=correction, preprocess_fn=preprocess_fn)


@DETECTORS.register(
    "mmd", help="Maximum Mean Discrepancy two-sample test with a Gaussian kernel (permutation p-value).",
    params=(_p_val(), Param("n_permutations", "int", 100, "Permutations of the test.", min=10,
                            max=MAX_PERMUTATIONS), _n_reference()),
    kind="batch",
)
def mmd(x_ref: np.ndarray, *, p_val: float, n_permutations: int, preprocess_fn: Any, **_: Any) -> Any:
    if not implementation.uses_alibi("mmd"):
        return own.MMD(x_ref, p_val=p_val, n_permutations=n_permutations, preprocess_fn=preprocess_fn)
    from alibi_detect.cd import MMDDrift

    return MMDDrift(x_ref, backend=BACKEND, p_val=p_val, n_permutations=n_permutations,
                    preprocess_fn=preprocess_fn, device=DEVICE)


@DETECTORS.register(
    "lsdd", help="Least-Squares Density Difference two-sample test (permutation p-value).",
    params=(_p_val(), Param("n_permutations", "int", 100, "Permutations of the test.", min=10,
                            max=MAX_PERMUTATIONS), _n_reference()),
    kind="batch",
)
def lsdd(x_ref: np.ndarray, *, p_val: float, n_permutations: int, preprocess_fn: Any, **_: Any) -> Any:
    if not implementation.uses_alibi("lsdd"):
        return own.LSDD(x_ref, p_val=p_val, n_permutations=n_permutations, preprocess_fn=preprocess_fn)
    from alibi_detect.cd import LSDDDrift

    return LSDDDrift(x_ref, backend=BACKEND, p_val=p_val, n_permutations=n_permutations,
                     preprocess_fn=preprocess_fn, device=DEVICE)


@DETECTORS.register(
    "chi_square", help="Chi-squared test per categorical feature (each distinct value is a category).",
    params=(_p_val(), _correction(), _n_reference()), kind="batch", feature_wise=True,
)
def chi_square(x_ref: np.ndarray, *, p_val: float, correction: str, preprocess_fn: Any, **_: Any) -> Any:
    from alibi_detect.cd import ChiSquareDrift

    return ChiSquareDrift(x_ref, p_val=p_val, correction=correction, preprocess_fn=preprocess_fn)


@DETECTORS.register(
    "tabular", help="Mixed tabular data: Kolmogorov-Smirnov for numerical and chi-squared for categorical "
    "features, aggregated with a multiple-testing correction.",
    params=(_p_val(), _correction(),
            Param("categorical_features", "int_list", None, "Indices of the categorical features "
                  "(null: all numerical).", min=0, nullable=True), _n_reference()),
    kind="batch", feature_wise=True,
)
def tabular(x_ref: np.ndarray, *, p_val: float, correction: str, categorical_features: list[int] | None,
            preprocess_fn: Any, **_: Any) -> Any:
    from alibi_detect.cd import TabularDrift

    n_features = x_ref.shape[1] if preprocess_fn is None else None
    if categorical_features and n_features is not None and max(categorical_features) >= n_features:
        raise InvalidInput(f"detector.categorical_features names feature {max(categorical_features)} but "
                           f"the inputs have {n_features} features.")
    categories = {int(i): None for i in categorical_features or []}
    return TabularDrift(x_ref, p_val=p_val, correction=correction, categories_per_feature=categories or None,
                        preprocess_fn=preprocess_fn)


@DETECTORS.register(
    "classifier", help="Trains a small classifier to tell the batch from the reference; drift when it can "
    "(out-of-fold AUC-like test, p-value from a binomial test).",
    params=(_p_val(), Param("epochs", "int", 3, "Training epochs of the domain classifier.", min=1, max=100),
            Param("hidden_size", "int", 32, "Hidden units of the domain classifier.", min=1, max=4096),
            Param("train_size", "float", 0.75, "Fraction of the data the classifier trains on.",
                  min=0.1, max=0.9),
            _n_reference()),
    kind="batch",
)
def classifier(x_ref: np.ndarray, *, p_val: float, epochs: int, hidden_size: int, train_size: float,
               preprocess_fn: Any, n_features: int, **_: Any) -> Any:
    from alibi_detect.cd import ClassifierDrift

    from clserver.drift.modules import DomainClassifier

    return ClassifierDrift(x_ref, model=DomainClassifier(n_features, hidden_size), backend=BACKEND,
                           p_val=p_val, preds_type="logits", epochs=epochs, train_size=train_size,
                           preprocess_fn=preprocess_fn, device=DEVICE, seed=FIT_SEED)


@DETECTORS.register(
    "mmd_online", help="Online MMD: tests every sample's window against the reference; thresholds set by "
    "bootstrap for the expected run time.",
    params=_online() + (Param("n_bootstraps", "int", 500, "Bootstrap simulations for the thresholds.",
                              min=100, max=MAX_BOOTSTRAPS), _n_reference(100)),
    kind="online",
)
def mmd_online(x_ref: np.ndarray, *, ert: float, window_size: int, n_bootstraps: int, preprocess_fn: Any,
               **_: Any) -> Any:
    from alibi_detect.cd import MMDDriftOnline

    return MMDDriftOnline(x_ref, ert=ert, window_size=window_size, backend=BACKEND, n_bootstraps=n_bootstraps,
                          preprocess_fn=preprocess_fn, device=DEVICE, verbose=False)


@DETECTORS.register(
    "lsdd_online", help="Online LSDD: tests every sample's window against the reference; thresholds set by "
    "bootstrap for the expected run time.",
    params=_online() + (Param("n_bootstraps", "int", 500, "Bootstrap simulations for the thresholds.",
                              min=100, max=MAX_BOOTSTRAPS), _n_reference(100)),
    kind="online",
)
def lsdd_online(x_ref: np.ndarray, *, ert: float, window_size: int, n_bootstraps: int, preprocess_fn: Any,
                **_: Any) -> Any:
    from alibi_detect.cd import LSDDDriftOnline

    return LSDDDriftOnline(x_ref, ert=ert, window_size=window_size, backend=BACKEND, n_bootstraps=n_bootstraps,
                           preprocess_fn=preprocess_fn, device=DEVICE, verbose=False)


@DETECTORS.register(
    "cvm_online", help="Online Cramér-von Mises test per feature (best on few features: use a preprocess); "
    "thresholds set by bootstrap for the expected run time.",
    params=_online() + (Param("n_bootstraps", "int", 15_000, "Bootstrap simulations for the thresholds "
                              "(at least about ert x features).", min=100, max=MAX_BOOTSTRAPS),
                        _n_reference(100)),
    kind="online",
)
def cvm_online(x_ref: np.ndarray, *, ert: float, window_size: int, n_bootstraps: int, preprocess_fn: Any,
               n_features: int, **_: Any) -> Any:
    from alibi_detect.cd import CVMDriftOnline

    # The thresholds are quantiles at 1 - beta, beta = 1 - (1 - 1/ert)^(1/features); a quantile
    # that far out needs at least 1/beta simulations.
    beta = 1 - (1 - 1 / ert) ** (1 / n_features)
    needed = math.ceil(1 / beta)
    if n_bootstraps < needed:
        raise InvalidInput(
            f"detector.n_bootstraps is {n_bootstraps} but cvm_online with ert {ert:g} on {n_features} features "
            f"needs at least {needed}; raise it, lower ert, or reduce the features with a preprocess.",
            details={"detector.n_bootstraps": n_bootstraps, "needed": needed})
    # Bootstrap streams are simulated a batch at a time; a smaller batch gives the same thresholds.
    batch_size = drift_budget.cvm_batch_size(n_ref=len(x_ref), window_size=window_size, n_bootstraps=n_bootstraps)
    return CVMDriftOnline(x_ref, ert=ert, window_sizes=[window_size], n_bootstraps=n_bootstraps,
                          preprocess_fn=preprocess_fn, verbose=False, batch_size=batch_size)


# --- options -----------------------------------------------------------------------------------
DEFAULT_DETECTOR = {"name": "mmd"}


def detector_options(*, raw: Any) -> dict[str, Any]:
    """Validate `detector` options (no alibi import): flat {name, <params>, preprocess}; a detector that
    needs alibi-detect where it is not installed is refused here, before anything is loaded or fitted."""
    if raw is None:
        raw = dict(DEFAULT_DETECTOR)
    if not isinstance(raw, dict):
        raise InvalidInput("detector must be an object such as {\"name\": \"mmd\", \"p_val\": 0.05}.",
                           details={"detector": type(raw).__name__})
    entry = DETECTORS.get(raw.get("name", DEFAULT_DETECTOR["name"]), "detector.name")
    implementation.require(entry.name)
    params = entry.validate({k: v for k, v in raw.items() if k not in ("name", "preprocess")}, "detector")
    preprocess = _preprocess_options(raw.get("preprocess"))
    return {"name": entry.name, **params, "preprocess": preprocess}


def _preprocess_options(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise InvalidInput("detector.preprocess must be null or an object such as "
                           "{\"name\": \"random_projection\", \"dim\": 32}.")
    entry = PREPROCESSORS.get(raw.get("name"), "detector.preprocess.name")
    params = entry.validate({k: v for k, v in raw.items() if k != "name"}, "detector.preprocess")
    return {"name": entry.name, **params}


def detector_kind(options: dict[str, Any]) -> str:
    return DETECTORS.get(options["name"], "detector.name").extra.get("kind", "batch")


def detector_list() -> list[dict[str, Any]]:
    """The registry as the API lists it, with the preprocess choices and the code that runs each."""
    preprocess = PREPROCESSORS.describe()
    return [{**entry, **implementation.describe(entry["name"]), "preprocess": preprocess}
            for entry in DETECTORS.describe()]


# --- fitting, saving, loading ------------------------------------------------------------------
@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fix the global RNGs alibi-detect draws from, and put them back afterwards."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def _quiet() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def detector_fit(*, options: dict[str, Any], x_ref: np.ndarray, model: nn.Module | None,
                 input_shape: list[int]) -> Any:
    """Build and fit a detector on the reference sample; raise InvalidInput when it cannot be."""
    from clserver.drift.modules import encoder_costs

    entry = DETECTORS.get(options["name"], "detector.name")
    implementation.require(entry.name)
    if implementation.uses_alibi(entry.name):
        from alibi_detect.cd.pytorch import preprocess_drift
    else:
        preprocess_drift = own.preprocess_batches
    params = {p.name: options[p.name] for p in entry.params}
    x_ref = np.ascontiguousarray(x_ref, dtype=np.float32)
    preprocess_fn, n_features = None, int(x_ref.shape[1])
    encoder_bytes = batch_bytes = 0
    pre = options.get("preprocess")
    if pre:
        pre_entry = PREPROCESSORS.get(pre["name"], "detector.preprocess.name")
        pre_params = {p.name: pre[p.name] for p in pre_entry.params}
        encoder = pre_entry.builder(n_features=n_features, model=model, input_shape=input_shape, **pre_params)
        encoder_bytes, row_bytes = encoder_costs(encoder, torch.from_numpy(x_ref[:1]))
        # A batch of the preprocess holds its activations at once: as many rows as CHUNK_BYTES takes.
        batch = max(1, min(PREPROCESS_BATCH, CHUNK_BYTES // max(row_bytes, 1)))
        batch_bytes = batch * row_bytes
        preprocess_fn = partial(preprocess_drift, model=encoder, device=torch.device(DEVICE), batch_size=batch)
        n_features = int(preprocess_fn(x_ref[:2]).reshape(2, -1).shape[1])
    sizes = drift_budget.Sizes(n_ref=len(x_ref), n_features=n_features, n_raw=int(x_ref.shape[1]), rows=0,
                               encoder_bytes=encoder_bytes, batch_activation_bytes=batch_bytes)
    minimums = {"n_reference": 10, **{p.name: int(p.min) for p in entry.params if p.type == "int"}}
    need = drift_budget.check_creation(name=entry.name, options=options, sizes=sizes, minimums=minimums)
    with drift_budget.reserved(need), seeded(FIT_SEED), _quiet():
        try:
            return accelerate(entry.builder(x_ref, preprocess_fn=preprocess_fn, n_features=n_features, **params))
        except InvalidInput:
            raise
        except (ValueError, RuntimeError) as exc:
            raise InvalidInput(f"The {entry.name} detector could not be fitted on the reference sample: "
                               f"{_first_line(exc)}") from exc


def detector_save(detector: Any, path: Path) -> None:
    if own.is_own(detector):
        return detector.save(path)
    from alibi_detect.saving import save_detector

    with _quiet():
        save_detector(detector, str(path))


def detector_load(path: Path) -> Any:
    """Load a detector this service saved (its files are ours: never load one a user uploaded)."""
    if own.is_saved_own(path):
        return own.load(path)
    implementation.require_saved()
    from alibi_detect.saving import load_detector

    with seeded(FIT_SEED), _quiet():
        return accelerate(load_detector(str(path)))


def detector_state_save(detector: Any, path: Path) -> None:
    detector.save_state(str(path))


def detector_state_load(detector: Any, path: Path) -> None:
    if path.exists():
        detector.load_state(str(path))
    else:
        detector.reset_state()


# --- checks ------------------------------------------------------------------------------------
def detector_check(*, detector: Any, options: dict[str, Any], x: np.ndarray) -> CheckResult:
    """Test one batch. Batch detectors test it at once; online ones sample by sample."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    need = drift_budget.check_batch(name=options["name"], options=options, sizes=_fitted_sizes(detector, x))
    try:
        with drift_budget.reserved(need), seeded(CHECK_SEED), _quiet():
            if detector_kind(options) == "online":
                return check_online(detector, options, x)
            return check_batch(detector, options, x)
    except (ValueError, RuntimeError) as exc:
        raise InvalidInput(f"The {options['name']} detector could not test this batch: {_first_line(exc)}") from exc


def _fitted_sizes(detector: Any, x: np.ndarray) -> drift_budget.Sizes:
    """What the memory of testing `x` grows with, read from a fitted (or loaded) detector."""
    inner = getattr(detector, "_detector", detector)
    shape = tuple(inner.x_ref.shape)
    encoder_bytes = batch_bytes = 0
    pre = getattr(inner, "preprocess_fn", None)
    if isinstance(pre, partial) and isinstance(pre.keywords.get("model"), nn.Module):
        costs = getattr(detector, "_encoder_costs", None)
        if costs is None:  # one forward pass of one row, once per loaded detector
            from clserver.drift.modules import encoder_costs

            costs = detector._encoder_costs = encoder_costs(pre.keywords["model"], torch.from_numpy(x[:1]))
        encoder_bytes, batch_bytes = costs[0], costs[1] * int(pre.keywords.get("batch_size", PREPROCESS_BATCH))
    return drift_budget.Sizes(n_ref=int(shape[0]), n_features=math.prod(shape[1:]), n_raw=int(x.shape[1]),
                              rows=len(x), encoder_bytes=encoder_bytes, batch_activation_bytes=batch_bytes)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
