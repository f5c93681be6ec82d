"""Continual-learning streams built from arrays (numpy only; no Avalanche here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np


@dataclass
class Stream:
    """A continual-learning stream as arrays: one (x, y) train and test pair per experience."""

    train: list[tuple[np.ndarray, np.ndarray]]
    test: list[tuple[np.ndarray, np.ndarray]]
    classes: list[list[int]]
    n_classes: int
    input_shape: list[int]
    description: dict = field(default_factory=dict)

    @property
    def n_experiences(self) -> int:
        return len(self.train)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (shipped inside the package): x in [0, 1], 64 features."""
    x, y = _digits()
    return x.copy(), y.copy()


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class train/test split, deterministic in `seed`."""
    rng = np.random.RandomState(seed)
    train_idx, test_idx = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_size))
        if len(idx) > 1:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def class_order(classes: list[int], seed: int) -> list[int]:
    order = list(classes)
    np.random.RandomState(seed).shuffle(order)
    return [int(c) for c in order]


def class_incremental(x: np.ndarray, y: np.ndarray, *, n_experiences: int, seed: int,
                      test_size: float, input_shape: list[int], name: str) -> Stream:
    classes = sorted(int(c) for c in np.unique(y))
    order = class_order(classes, seed)
    per = len(order) // n_experiences
    groups = [sorted(order[i * per:(i + 1) * per]) for i in range(n_experiences)]
    tr, te = stratified_split(y, test_size, seed)
    train, test = [], []
    for group in groups:
        mask = np.isin(y, group)
        itr = tr[mask[tr]]
        ite = te[mask[te]]
        train.append((x[itr], y[itr]))
        test.append((x[ite], y[ite]))
    return Stream(train, test, groups, max(classes) + 1, input_shape,
                  {"name": name, "scenario": "class_incremental", "class_order": order})


def new_instances(x: np.ndarray, y: np.ndarray, *, n_experiences: int, seed: int,
                  test_size: float, input_shape: list[int], name: str) -> Stream:
    """Same classes in every experience; the samples are dealt out at random."""
    tr, te = stratified_split(y, test_size, seed)
    rng = np.random.RandomState(seed + 1)
    tr = tr[rng.permutation(len(tr))]
    train, test = [], []
    for chunk in np.array_split(tr, n_experiences):
        chunk = np.sort(chunk)
        train.append((x[chunk], y[chunk]))
    for chunk in np.array_split(te[rng.permutation(len(te))], n_experiences):
        chunk = np.sort(chunk)
        test.append((x[chunk], y[chunk]))
    classes = sorted(int(c) for c in np.unique(y))
    return Stream(train, test, [sorted(int(c) for c in np.unique(t[1])) for t in train],
                  max(classes) + 1, input_shape, {"name": name, "scenario": "new_instances"})


def time_ordered(x: np.ndarray, y: np.ndarray, *, n_experiences: int, seed: int,
                 test_size: float, input_shape: list[int], name: str) -> Stream:
    """The rows' own order cut into chunks: data arriving over time; test rows drawn per chunk."""
    train, test = [], []
    rng = np.random.RandomState(seed)
    for chunk in np.array_split(np.arange(len(y)), n_experiences):
        picked = rng.permutation(len(chunk))
        n_test = max(1, int(round(len(chunk) * test_size))) if len(chunk) > 1 else 0
        ite, itr = np.sort(chunk[picked[:n_test]]), np.sort(chunk[picked[n_test:]])
        train.append((x[itr], y[itr]))
        test.append((x[ite], y[ite]))
    classes = sorted(int(c) for c in np.unique(y))
    return Stream(train, test, [sorted(int(c) for c in np.unique(t[1])) for t in train],
                  max(classes) + 1, input_shape, {"name": name, "scenario": "time_ordered"})


def permuted(x: np.ndarray, y: np.ndarray, *, n_experiences: int, seed: int, test_size: float,
             input_shape: list[int], name: str) -> Stream:
    """Domain-incremental: every experience applies its own fixed pixel permutation."""
    tr, te = stratified_split(y, test_size, seed)
    rng = np.random.RandomState(seed)
    flat = x.reshape(len(x), -1)
    train, test = [], []
    for _ in range(n_experiences):
        perm = rng.permutation(flat.shape[1])
        px = flat[:, perm].reshape(x.shape)
        train.append((px[tr], y[tr]))
        test.append((px[te], y[te]))
    classes = sorted(int(c) for c in np.unique(y))
    return Stream(train, test, [classes] * n_experiences, max(classes) + 1, input_shape,
                  {"name": name, "scenario": "domain_incremental"})


def rotate_images(images: np.ndarray, angle: float) -> np.ndarray:
    """Rotate square images (N, H, W) by `angle` degrees about their centre, bilinear."""
    from scipy.ndimage import rotate

    if angle % 360 == 0:
        return images.copy()
    return rotate(images, angle, axes=(1, 2), reshape=False, order=1, mode="constant",
                  cval=0.0).astype(images.dtype)


def rotated(x: np.ndarray, y: np.ndarray, *, n_experiences: int, seed: int, test_size: float,
            input_shape: list[int], name: str, max_angle: float = 180.0) -> Stream:
    """Domain-incremental: experience i sees every image rotated by i * max_angle / n degrees."""
    tr, te = stratified_split(y, test_size, seed)
    side = int(round(np.sqrt(x.reshape(len(x), -1).shape[1])))
    images = x.reshape(len(x), side, side)
    train, test = [], []
    angles = [float(a) for a in np.linspace(0.0, max_angle, n_experiences, endpoint=False)]
    for angle in angles:
        rx = rotate_images(images, angle).reshape(x.shape)
        train.append((rx[tr], y[tr]))
        test.append((rx[te], y[te]))
    classes = sorted(int(c) for c in np.unique(y))
    return Stream(train, test, [classes] * n_experiences, max(classes) + 1, input_shape,
                  {"name": name, "scenario": "domain_incremental", "angles": angles})
