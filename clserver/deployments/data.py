"""Arrays of a deployment (numpy, no torch): request validation, samples, the replay memory, NPZ files."""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from claas_site.errors import InvalidInput, PayloadTooLarge


# --- request bodies ----------------------------------------------------------------------------
def inputs_parse(*, inputs: Any, input_shape: list[int], max_rows: int | None = None) -> np.ndarray:
    """`inputs` as float32 rows of the model's feature count; one clear sentence when they are not.

    At most `max_rows` rows (default: settings.MAX_BATCH_ROWS, one predict or ingest request).
    """
    max_rows = settings.MAX_BATCH_ROWS if max_rows is None else max_rows
    n_features = math.prod(input_shape)
    if inputs is None:
        raise InvalidInput("inputs is required: a list of rows, each a list of numbers.", details={"inputs": "required"})
    if not isinstance(inputs, list):
        raise InvalidInput("inputs must be a list of rows, each a list of numbers.",
                           details={"inputs": type(inputs).__name__})
    if not inputs:
        raise InvalidInput("inputs is empty; send at least one row.", details={"inputs": 0})
    if len(inputs) > max_rows:
        raise PayloadTooLarge(f"inputs has {len(inputs)} rows; at most {max_rows} are allowed per request.",
                              details={"inputs": len(inputs), "max_rows": max_rows})
    try:
        array = np.asarray(inputs)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype == object or array.ndim < 2:
        raise InvalidInput(f"inputs must be a list of rows of {n_features} numbers each; the rows differ in "
                           "length or are not lists.", details={"inputs": "ragged"})
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"inputs must hold numbers only; found values of type {_kind_name(array.dtype)}.",
                           details={"inputs": str(array.dtype)})
    got = math.prod(array.shape[1:])
    if got != n_features:
        raise InvalidInput(f"Each row of inputs must have {n_features} features (the model's input size); "
                           f"these rows have {got}.", details={"expected": n_features, "got": got})
    array = array.reshape(len(array), n_features).astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).any(axis=1).sum())
        raise InvalidInput(f"inputs contains NaN or infinite values in {bad} rows; send finite numbers only.",
                           details={"rows_with_nan_or_inf": bad})
    return array


def labels_parse(*, labels: Any, n_rows: int, num_classes: int) -> np.ndarray:
    """Integer class labels, one per input row, each in 0..num_classes-1."""
    if labels is None:
        raise InvalidInput("labels is required: one integer class label per row of inputs.",
                           details={"labels": "required"})
    if not isinstance(labels, list) or any(isinstance(v, list) for v in labels[:1]):
        raise InvalidInput("labels must be a flat list of integer class labels.",
                           details={"labels": type(labels).__name__})
    if len(labels) != n_rows:
        raise InvalidInput(f"labels has {len(labels)} entries but inputs has {n_rows} rows; they must match.",
                           details={"labels": len(labels), "inputs": n_rows})
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or
           (isinstance(v, float) and not v.is_integer()) for v in labels):
        raise InvalidInput("labels must hold integer class labels only.", details={"labels": "not integers"})
    array = np.asarray(labels, dtype=np.int64)
    if array.min() < 0 or array.max() >= num_classes:
        raise InvalidInput(f"labels must lie in 0..{num_classes - 1} (the model's classes); found "
                           f"{int(array.min())}..{int(array.max())}.",
                           details={"min": int(array.min()), "max": int(array.max())})
    return array


def _kind_name(dtype: np.dtype) -> str:
    return {"U": "string", "S": "bytes", "b": "boolean", "O": "object"}.get(dtype.kind, str(dtype))


# --- samples -----------------------------------------------------------------------------------
def class_balanced_indices(y: np.ndarray, size: int, rng: np.random.RandomState) -> np.ndarray:
    """`size` indices spread as evenly over the classes as the data allows (all when size >= len)."""
    if size >= len(y):
        return np.arange(len(y))
    by_class = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    quota = _balanced_quota({c: len(idx) for c, idx in by_class.items()}, size)
    picked = np.concatenate([by_class[c][:q] for c, q in quota.items()]) if quota else np.zeros(0, np.int64)
    return np.sort(picked)


def _balanced_quota(available: dict[int, int], size: int) -> dict[int, int]:
    """Equal shares per class; what a small class cannot fill goes to the others."""
    quota = {c: 0 for c in available}
    left = size
    open_classes = sorted(available)
    while left > 0 and open_classes:
        share = max(1, left // len(open_classes))
        for c in list(open_classes):
            take = min(share, available[c] - quota[c], left)
            quota[c] += take
            left -= take
            if quota[c] >= available[c]:
                open_classes.remove(c)
            if left == 0:
                break
    return quota


def holdout_split(n: int, fraction: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices; at least one of each when n >= 2."""
    order = rng.permutation(n)
    n_hold = int(round(n * fraction))
    if n >= 2:
        n_hold = min(max(n_hold, 1), n - 1)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


# --- the replay memory -------------------------------------------------------------------------
@dataclass
class Memory:
    """Samples kept to replay the past; `seen[c]` counts class c's samples seen so far."""

    x: np.ndarray
    y: np.ndarray
    seen: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


MEMORY_POLICIES = ("reservoir", "class_balanced")


def memory_initial(*, x: np.ndarray, y: np.ndarray, size: int, num_classes: int,
                   rng: np.random.RandomState) -> Memory:
    """A class-balanced sample of the data behind the first version."""
    idx = class_balanced_indices(y, size, rng)
    return Memory(x[idx], y[idx], np.bincount(y, minlength=num_classes).astype(np.int64))


def memory_merge(*, memory: Memory, x: np.ndarray, y: np.ndarray, size: int, policy: str,
                 rng: np.random.RandomState) -> Memory:
    """The memory after learning (x, y): still a sample of everything seen, `size` at most.

    `reservoir` keeps a uniform sample of all data seen (old and new in proportion to what was
    seen of each); `class_balanced` does the same within each class and gives classes equal room.
    """
    seen = memory.seen + np.bincount(y, minlength=len(memory.seen))[:len(memory.seen)]
    if policy == "class_balanced":
        classes = np.flatnonzero(seen)
        quota = _balanced_quota({int(c): int(min(seen[c], (memory.y == c).sum() + (y == c).sum()))
                                 for c in classes}, size)
        parts = [_reservoir(memory, x, y, q, rng, only=c, seen_old=int(memory.seen[c]))
                 for c, q in quota.items() if q]
        xs = [p[0] for p in parts] or [memory.x[:0]]
        ys = [p[1] for p in parts] or [memory.y[:0]]
        return Memory(np.concatenate(xs), np.concatenate(ys), seen)
    mx, my = _reservoir(memory, x, y, size, rng, only=None, seen_old=int(memory.seen.sum()))
    return Memory(mx, my, seen)


def _reservoir(memory: Memory, x: np.ndarray, y: np.ndarray, size: int, rng: np.random.RandomState,
               only: int | None, seen_old: int) -> tuple[np.ndarray, np.ndarray]:
    old = np.flatnonzero(memory.y == only) if only is not None else np.arange(len(memory))
    new = np.flatnonzero(y == only) if only is not None else np.arange(len(y))
    total = len(old) + len(new)
    size = min(size, total)
    # The memory stands for `seen_old` samples: draw how many slots the new data wins in a
    # uniform sample of size `size` from seen_old + len(new) items (hypergeometric).
    n_new = int(rng.hypergeometric(len(new), max(seen_old, len(old)), size)) if len(new) and size else 0
    n_new = max(n_new, size - len(old))
    n_new = min(n_new, len(new))
    n_old = min(size - n_new, len(old))
    keep_old = rng.choice(old, n_old, replace=False) if n_old else old[:0]
    keep_new = rng.choice(new, n_new, replace=False) if n_new else new[:0]
    return (np.concatenate([memory.x[keep_old], x[keep_new]]).astype(np.float32),
            np.concatenate([memory.y[keep_old], y[keep_new]]).astype(np.int64))


# --- files -------------------------------------------------------------------------------------
def npz_write(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically: a crash mid-write leaves the previous file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


def npz_read(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def memory_write(path: Path, memory: Memory) -> None:
    npz_write(path, x=memory.x, y=memory.y, seen=memory.seen)


def memory_read(path: Path) -> Memory:
    data = npz_read(path)
    return Memory(data["x"], data["y"], data["seen"])
