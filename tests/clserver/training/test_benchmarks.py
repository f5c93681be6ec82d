"""Benchmarks build the streams users expect, from data that exists offline."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from claas_site.errors import InvalidInput
from clserver.training.benchmarks import benchmark_source
from clserver.training.streams import load_digits_arrays


def load(name: str, **params):
    _, source = benchmark_source(name=name, params=params, owner=None)
    return source.load()


def test_split_digits_deals_all_classes_once_in_an_order_set_by_seed():
    stream = load("split_digits", n_experiences=5, seed=1)
    assert stream.n_experiences == 5
    assert sorted(c for group in stream.classes for c in group) == list(range(10))
    for (x, y), group in zip(stream.train, stream.classes):
        assert set(np.unique(y)) == set(group) and x.shape[1] == 64
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert load("split_digits", n_experiences=5, seed=1).classes == stream.classes
    assert load("split_digits", n_experiences=5, seed=2).classes != stream.classes
    n_train = sum(len(y) for _, y in stream.train)
    n_test = sum(len(y) for _, y in stream.test)
    assert n_train + n_test == 1797 and abs(n_test / 1797 - 0.2) < 0.01


def test_permuted_digits_keeps_labels_and_permutes_pixels_per_experience():
    stream = load("permuted_digits", n_experiences=3, seed=0)
    (x0, y0), (x1, y1) = stream.train[0], stream.train[1]
    assert np.array_equal(y0, y1)
    assert not np.array_equal(x0, x1)
    assert np.allclose(np.sort(x0, axis=1), np.sort(x1, axis=1))


def test_rotated_digits_starts_unrotated_and_turns():
    stream = load("rotated_digits", n_experiences=4, seed=0, max_angle=180)
    assert stream.description["angles"] == [0.0, 45.0, 90.0, 135.0]
    x, y = load_digits_arrays()
    x0 = stream.train[0][0]
    assert any(np.allclose(x0[0], row) for row in x[:50])
    assert not np.allclose(stream.train[2][0], x0)


def test_missing_torchvision_files_are_named_and_nothing_downloads(settings, tmp_path):
    settings.DATASET_ROOT = tmp_path
    with pytest.raises(InvalidInput) as err:
        benchmark_source(name="split_mnist", params={"n_experiences": 5}, owner=None)
    assert "MNIST/raw/train-images-idx3-ubyte" in err.value.message
    assert "never downloads" in err.value.message
    # The message goes to users: the files are named under CLAAS_DATASET_ROOT, never by the server's path.
    assert str(tmp_path) not in err.value.message and str(tmp_path) not in str(err.value.details)
    assert len(err.value.details["missing_files"]) == 4
    assert not any(tmp_path.iterdir())


def _idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">IIII", 0x00000803, *images.shape) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_tiny_mnist(root, folder="MNIST", per_class=3):
    rng = np.random.RandomState(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", per_class), ("t10k", 1)):
        labels = np.repeat(np.arange(10), n)
        images = rng.randint(0, 256, size=(len(labels), 28, 28))
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx_images(images))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx_labels(labels))


def test_split_mnist_reads_torchvisions_layout(settings, tmp_path):
    settings.DATASET_ROOT = tmp_path
    write_tiny_mnist(tmp_path)
    stream = load("split_mnist", n_experiences=5, seed=0)
    assert stream.input_shape == [1, 28, 28]
    assert [len(y) for _, y in stream.train] == [6] * 5
    assert stream.train[0][0].shape == (6, 1, 28, 28) and stream.train[0][0].max() <= 1.0
    permuted = load("permuted_mnist", n_experiences=2, seed=0)
    assert len(permuted.train[0][1]) == 30 and permuted.classes[0] == list(range(10))


def test_split_fashion_mnist_reads_its_own_folder(settings, tmp_path):
    settings.DATASET_ROOT = tmp_path
    write_tiny_mnist(tmp_path, folder="FashionMNIST")
    assert load("split_fashion_mnist", n_experiences=2, seed=0).n_experiences == 2


def write_tiny_cifar(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.randint(0, 256, size=(10, 3072)).astype(np.uint8), "labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_split_cifar10_reads_python_batches(settings, tmp_path):
    settings.DATASET_ROOT = tmp_path
    write_tiny_cifar(tmp_path)
    stream = load("split_cifar10", n_experiences=2, seed=0)
    assert stream.input_shape == [3, 32, 32]
    assert sum(len(y) for _, y in stream.train) == 50


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_cifar_batch_with_code_in_it_is_refused(settings, tmp_path):
    settings.DATASET_ROOT = tmp_path
    folder = write_tiny_cifar(tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Boom(), "labels": [0]}))
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        load("split_cifar10", n_experiences=2, seed=0)
