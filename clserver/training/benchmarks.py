"""The benchmark registry: streams built from data that exists offline.

Each builder validates cheaply and returns a Source; `Source.load()` builds the arrays.
Nothing here downloads: torchvision datasets are read from CLAAS_DATASET_ROOT only.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from django.conf import settings

from claas_site.errors import InvalidInput
from claas_site.params import Param, Registry
from clserver.training import streams
from clserver.training.streams import Stream

BENCHMARKS = Registry("benchmark")

DIGITS_SAMPLES = 1797
DIGITS_CLASSES = 10
DEFAULT_TEST_SIZE = 0.2


@dataclass
class Source:
    """What a benchmark will produce, known before any data is loaded."""

    n_experiences: int
    n_classes: int
    input_shape: list[int]
    n_train: int
    load: Callable[[], Stream]


def _seed() -> Param:
    return Param("seed", "int", 1, "Seed of the class order, split and transformations.", min=0, max=2**31 - 1)


def _test_size() -> Param:
    return Param("test_size", "float", DEFAULT_TEST_SIZE, "Fraction of each class held out for testing.",
                 min=0.05, max=0.9)


def _check_divides(n_classes: int, n_experiences: int) -> None:
    if n_classes % n_experiences:
        raise InvalidInput(
            f"benchmark.n_experiences must divide the {n_classes} classes evenly; {n_experiences} does not.",
            details={"benchmark.n_experiences": n_experiences},
        )


@lru_cache(maxsize=32)
def _digits_train_count(test_size: float) -> int:
    x, y = streams.load_digits_arrays()
    tr, _ = streams.stratified_split(y, test_size, 0)
    return len(tr)


@BENCHMARKS.register(
    "split_digits",
    help="Class-incremental: scikit-learn's 8x8 digits, classes dealt into experiences in an order set by seed.",
    params=(Param("n_experiences", "int", 5, "Number of experiences.", min=1, max=10), _seed(), _test_size()),
    kind="class_incremental",
)
def split_digits(*, n_experiences: int, seed: int, test_size: float, owner: Any = None) -> Source:
    _check_divides(DIGITS_CLASSES, n_experiences)

    def load() -> Stream:
        x, y = streams.load_digits_arrays()
        return streams.class_incremental(x, y, n_experiences=n_experiences, seed=seed, test_size=test_size,
                                         input_shape=[64], name="split_digits")
    return Source(n_experiences, DIGITS_CLASSES, [64], _digits_train_count(test_size), load)


@BENCHMARKS.register(
    "permuted_digits",
    help="Domain-incremental: every experience permutes the 64 pixels of all digits its own way.",
    params=(Param("n_experiences", "int", 5, "Number of experiences.", min=1, max=50), _seed(), _test_size()),
    kind="domain_incremental",
)
def permuted_digits(*, n_experiences: int, seed: int, test_size: float, owner: Any = None) -> Source:
    def load() -> Stream:
        x, y = streams.load_digits_arrays()
        return streams.permuted(x, y, n_experiences=n_experiences, seed=seed, test_size=test_size,
                                input_shape=[64], name="permuted_digits")
    return Source(n_experiences, DIGITS_CLASSES, [64], _digits_train_count(test_size) * n_experiences, load)


@BENCHMARKS.register(
    "rotated_digits",
    help="Domain-incremental: experience i sees every digit rotated by i x max_angle / n_experiences degrees.",
    params=(Param("n_experiences", "int", 5, "Number of experiences.", min=1, max=50), _seed(), _test_size(),
            Param("max_angle", "float", 180.0, "Rotation range in degrees.", min=0.0, max=360.0)),
    kind="domain_incremental",
)
def rotated_digits(*, n_experiences: int, seed: int, test_size: float, max_angle: float,
                   owner: Any = None) -> Source:
    def load() -> Stream:
        x, y = streams.load_digits_arrays()
        return streams.rotated(x, y, n_experiences=n_experiences, seed=seed, test_size=test_size,
                               input_shape=[64], name="rotated_digits", max_angle=max_angle)
    return Source(n_experiences, DIGITS_CLASSES, [64], _digits_train_count(test_size) * n_experiences, load)


# --- user datasets ---------------------------------------------------------------------------
SCENARIOS = {
    "class_incremental": streams.class_incremental,
    "new_instances": streams.new_instances,
    "time_ordered": streams.time_ordered,
}


@BENCHMARKS.register(
    "dataset",
    help="A dataset you uploaded to /api/datasets/, cut into a stream by the chosen scenario.",
    params=(
        Param("dataset", "str", "", "Name of your uploaded dataset."),
        Param("scenario", "str", "time_ordered", "How the rows become experiences.", choices=list(SCENARIOS)),
        Param("n_experiences", "int", 5, "Number of experiences.", min=1, max=100), _seed(), _test_size(),
    ),
    kind="user_dataset",
)
def user_dataset(*, dataset: str, scenario: str, n_experiences: int, seed: int, test_size: float,
                 owner: Any = None) -> Source:
    from clserver.models import Dataset

    row = Dataset.objects.filter(owner=owner, name=dataset).first() if dataset else None
    if row is None:
        raise InvalidInput(f"benchmark.dataset: you have no dataset named '{dataset}'.",
                           details={"benchmark.dataset": dataset})
    n_classes = max(row.classes) + 1 if row.classes else 0
    if scenario == "class_incremental":
        _check_divides(len(row.classes), n_experiences)
    n_train = int(row.n_samples * (1 - test_size))
    if n_train < n_experiences:
        raise InvalidInput(
            f"benchmark.n_experiences is {n_experiences} but dataset '{dataset}' has only {n_train} training rows.",
            details={"benchmark.n_experiences": n_experiences})
    path = settings.DATA_DIR / row.file

    def load() -> Stream:
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
        return SCENARIOS[scenario](x, y, n_experiences=n_experiences, seed=seed, test_size=test_size,
                                   input_shape=[int(x.shape[1])], name=f"dataset:{dataset}")
    return Source(n_experiences, n_classes, [row.n_features], n_train, load)


# --- torchvision datasets, read from CLAAS_DATASET_ROOT in torchvision's own layout ---------
MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]
CIFAR10_FILES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def _missing_files(folder: Path, names: list[str], allow_gz: bool) -> list[str]:
    missing = []
    for name in names:
        candidates = [folder / name] + ([folder / f"{name}.gz"] if allow_gz else [])
        if not any(c.is_file() for c in candidates):
            # relative to CLAAS_DATASET_ROOT: the message goes to users, the server's own paths never do
            missing.append(str((folder / name).relative_to(settings.DATASET_ROOT)))
    return missing


def _require(folder: Path, names: list[str], allow_gz: bool, label: str) -> None:
    missing = _missing_files(folder, names, allow_gz)
    if missing:
        raise InvalidInput(
            f"{label} is not available offline: missing {', '.join(missing)} under CLAAS_DATASET_ROOT "
            f"(put torchvision's files there; CLaaS never downloads).",
            details={"missing_files": missing})


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR's python batches are pickles: allow numpy arrays and plain containers, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file")


def _cifar_arrays(train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = settings.DATASET_ROOT / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


def _torchvision_arrays(cls_name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    if cls_name == "CIFAR10":
        return _cifar_arrays(train)
    import torchvision.datasets as tvd

    ds = getattr(tvd, cls_name)(root=str(settings.DATASET_ROOT), train=train, download=False)
    data = np.asarray(ds.data)
    x = data.astype(np.float32) / 255.0
    x = x[:, None, :, :] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)


def _tv_split(cls_name: str, *, n_experiences: int, seed: int, name: str, permute: bool = False) -> Stream:
    xtr, ytr = _torchvision_arrays(cls_name, True)
    xte, yte = _torchvision_arrays(cls_name, False)
    shape = list(xtr.shape[1:])
    if permute:
        rng = np.random.RandomState(seed)
        train, test = [], []
        flat_tr, flat_te = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
        for _ in range(n_experiences):
            perm = rng.permutation(flat_tr.shape[1])
            train.append((flat_tr[:, perm].reshape(xtr.shape), ytr))
            test.append((flat_te[:, perm].reshape(xte.shape), yte))
        return Stream(train, test, [list(range(10))] * n_experiences, 10, shape,
                      {"name": name, "scenario": "domain_incremental"})
    order = streams.class_order(list(range(10)), seed)
    per = 10 // n_experiences
    groups = [sorted(order[i * per:(i + 1) * per]) for i in range(n_experiences)]
    train = [(xtr[np.isin(ytr, g)], ytr[np.isin(ytr, g)]) for g in groups]
    test = [(xte[np.isin(yte, g)], yte[np.isin(yte, g)]) for g in groups]
    return Stream(train, test, groups, 10, shape, {"name": name, "scenario": "class_incremental",
                                                   "class_order": order})


def _tv_entry(name: str, cls_name: str, folder: str, files: list[str], gz: bool, shape: list[int],
              n_train: int, permute: bool, help: str) -> None:
    @BENCHMARKS.register(
        name, help=help, kind="torchvision",
        params=(Param("n_experiences", "int", 5, "Number of experiences.", min=1, max=50 if permute else 10),
                _seed()),
    )
    def builder(*, n_experiences: int, seed: int, owner: Any = None) -> Source:
        if not permute:
            _check_divides(10, n_experiences)
        _require(settings.DATASET_ROOT / folder, files, gz, name)
        return Source(n_experiences, 10, shape, n_train * (n_experiences if permute else 1),
                      lambda: _tv_split(cls_name, n_experiences=n_experiences, seed=seed, name=name,
                                        permute=permute))


_tv_entry("split_mnist", "MNIST", "MNIST/raw", MNIST_FILES, False, [1, 28, 28], 60000, False,
          "Class-incremental MNIST from CLAAS_DATASET_ROOT/MNIST/raw.")
_tv_entry("split_fashion_mnist", "FashionMNIST", "FashionMNIST/raw", MNIST_FILES, False, [1, 28, 28], 60000,
          False, "Class-incremental Fashion-MNIST from CLAAS_DATASET_ROOT/FashionMNIST/raw.")
_tv_entry("split_cifar10", "CIFAR10", "cifar-10-batches-py", CIFAR10_FILES, False, [3, 32, 32], 50000, False,
          "Class-incremental CIFAR-10 from CLAAS_DATASET_ROOT/cifar-10-batches-py.")
_tv_entry("permuted_mnist", "MNIST", "MNIST/raw", MNIST_FILES, False, [1, 28, 28], 60000, True,
          "Domain-incremental MNIST with one pixel permutation per experience.")


def benchmark_source(*, name: Any, params: Any, owner: Any) -> tuple[dict[str, Any], Source]:
    """Validate benchmark options; returns the full params and the (not yet loaded) source."""
    entry = BENCHMARKS.get(name, "benchmark.name")
    full = entry.validate(params, "benchmark")
    return full, entry.builder(owner=owner, **full)
