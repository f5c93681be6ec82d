"""Training minibatches by tensor indexing: Avalanche's own batches, without per-sample calls.

Avalanche's loaders collate every minibatch from per-sample `dataset[i]` calls; for small models
that costs more than the forward and backward passes. When every dataset behind an experience's
loader is transform-free, `TensorBatchesPlugin` gathers each dataset once into tensors and serves
the same minibatches from them: the loader's own samplers pick the indices and the random draws
happen in the same order, so training gives the same model, faster. Strategies that draw a memory
minibatch beside each training minibatch from a loader of their own (DER, ER-ACE: `replay_loader`)
get the same treatment for that loader. Anything else (transforms, worker processes, datasets too
large to hold twice) keeps Avalanche's loader.

Gathering itself indexes in bulk (`bulk_columns`): an Avalanche dataset's tree of concatenations, subsets,
tensor datasets and data attributes (DER's stored logits) is resolved to index arrays, so a replay
memory rebuilt at every update costs a few tensor copies rather than a Python call per sample.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from avalanche.benchmarks.utils.classification_dataset import _TensorClassificationDataset
from avalanche.benchmarks.utils.data import AvalancheDataset
from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader
from avalanche.benchmarks.utils.flat_data import ConstantSequence, FlatData, LazyIndices, LazyRange
from avalanche.training.utils import cycle
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader, TensorDataset

# Gathered tensors are a second copy of the experience's data: beyond this, keep Avalanche's loader.
MAX_BYTES = 1 << 30
# On a GPU the gathered tensors live on the device (no host-to-device copy per minibatch) up to this.
MAX_DEVICE_BYTES = 512 << 20
# Tensor datasets whose samples are plain rows of their tensors (labels as Python numbers for Avalanche's).
_TENSOR_GETITEMS = (TensorDataset.__getitem__, _TensorClassificationDataset.__getitem__)


def transform_free(data: Any) -> bool:
    """True when no transform group of `data` or of anything it is made of holds a transform."""
    for attr in ("_transform_groups", "_frozen_transform_groups"):
        groups = getattr(data, attr, None)
        if groups is not None and any(t is not None for t in groups.transform_groups.values()):
            return False
    parts = list(getattr(data, "_datasets", None) or [])
    flat = getattr(data, "_flat_data", None)
    if flat is not None:
        parts.append(flat)
    return all(transform_free(part) for part in parts if hasattr(part, "_datasets") or
               hasattr(part, "_transform_groups"))


def gather(datasets: Sequence[Any], collate_fn: Any) -> list[torch.Tensor] | None:
    """The datasets, one after the other (ConcatDataset order), collated once into whole tensors."""
    if not all(transform_free(d) for d in datasets):
        return None
    parts: list[list[torch.Tensor]] = []
    for data in datasets:
        if len(data) == 0:
            continue
        batch = bulk_columns(data, collate_fn)
        if batch is None:
            batch = collate_fn([data[i] for i in range(len(data))])
        if not isinstance(batch, (list, tuple)) or not all(
                isinstance(t, torch.Tensor) and t.dim() > 0 and len(t) == len(data) for t in batch):
            return None
        parts.append(list(batch))
    if not parts or any(len(p) != len(parts[0]) for p in parts):
        return None
    tensors = [torch.cat(columns) if len(columns) > 1 else columns[0] for columns in zip(*parts)]
    if sum(t.element_size() * t.numel() for t in tensors) > MAX_BYTES:
        return None
    return tensors


# Samples checked against the per-sample path before a bulk gather is trusted (first, middle, last).
_PROBES = 3


def bulk_columns(data: Any, collate_fn: Any) -> list[torch.Tensor] | None:
    """`collate_fn([data[i] for i in range(len(data))])` by tensor indexing, without a call per sample:
    the dataset's tree (Avalanche datasets, their concatenations and subsets, tensor datasets, data
    attributes such as DER's stored logits) is resolved to index arrays once. None where some part of
    the tree is of a kind not handled here, or where the result differs, on a few probe samples, from
    what the per-sample path collates (dtype, shape or value): the caller then takes that path."""
    n = len(data)
    try:
        columns = _columns(data, np.arange(n, dtype=np.int64))
    except (AttributeError, IndexError, TypeError, ValueError, RuntimeError):
        return None
    if not columns or any(not isinstance(c, torch.Tensor) or len(c) != n for c in columns):
        return None
    probes = sorted({0, n // 2, n - 1})[:_PROBES]
    expected = collate_fn([data[i] for i in probes])
    if not isinstance(expected, (list, tuple)) or len(expected) != len(columns):
        return None
    index = torch.as_tensor(probes, dtype=torch.long)
    for got, want in zip(columns, expected):
        if not isinstance(want, torch.Tensor) or want.dtype != got.dtype or not torch.equal(got[index], want):
            return None
    return columns


def _positions(data: Any) -> np.ndarray | None:
    """A FlatData's subset indices as an array (None: no subset, the concatenation itself)."""
    indices = data._indices
    if indices is None:
        return None
    if isinstance(indices, LazyIndices):
        if isinstance(indices, LazyRange):
            return np.arange(len(indices), dtype=np.int64) + (indices._start + indices._offset)
        indices._to_eager()
        return np.asarray(indices._eager_list, dtype=np.int64)
    return np.asarray(indices, dtype=np.int64)


def _split(data: Any, idx: np.ndarray) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """Where the samples `idx` of a FlatData live: (dataset, indices in it, positions in `idx`) per dataset."""
    subset = _positions(data)
    flat = subset[idx] if subset is not None else idx
    if len(data._datasets) == 1:
        return [(data._datasets[0], flat, np.arange(len(idx)))]
    ends = np.asarray(data._cumulative_sizes, dtype=np.int64)
    which = np.searchsorted(ends, flat, side="right")
    starts = np.concatenate([[0], ends[:-1]])
    parts = []
    for k in np.unique(which):
        at = np.nonzero(which == k)[0]
        parts.append((data._datasets[int(k)], flat[at] - starts[k], at))
    return parts


def _merge(n: int, parts: list[tuple[list[torch.Tensor], np.ndarray]]) -> list[torch.Tensor] | None:
    """Columns of n samples from the columns of each part and the positions they go to."""
    if len(parts) == 1 and len(parts[0][1]) == n and np.array_equal(parts[0][1], np.arange(n)):
        return parts[0][0]
    first = parts[0][0]
    if any(len(cols) != len(first) or any(c.dtype != f.dtype or c.shape[1:] != f.shape[1:]
                                          for c, f in zip(cols, first)) for cols, _ in parts):
        return None
    out = [f.new_empty((n, *f.shape[1:])) for f in first]
    for cols, at in parts:
        where = torch.from_numpy(at)
        for o, c in zip(out, cols):
            o[where] = c
    return out


def _columns(data: Any, idx: np.ndarray) -> list[torch.Tensor] | None:
    """The collated fields of samples `idx` of a transform-free dataset, or None."""
    if isinstance(data, AvalancheDataset):
        columns = _columns(data._flat_data, idx)
        if columns is None:
            return None
        for attribute in data._data_attributes.values():
            if attribute.use_in_getitem:
                values = _values(attribute.data, idx)
                if values is None:
                    return None
                columns = [*columns, values]
        return columns
    if isinstance(data, FlatData):
        parts = []
        for part, local, at in _split(data, idx):
            columns = _columns(part, local)
            if columns is None:
                return None
            parts.append((columns, at))
        return _merge(len(idx), parts)
    if isinstance(data, TensorDataset) and type(data).__getitem__ in _TENSOR_GETITEMS:
        index = torch.from_numpy(idx)
        columns = [t[index] for t in data.tensors]
        if isinstance(data, _TensorClassificationDataset):
            # Its labels come out as Python numbers (`.item()`), which collate to 64 bits.
            label = columns[1]
            columns[1] = label.to(torch.int64 if not label.is_floating_point() and label.dtype != torch.bool
                                  else torch.float64 if label.is_floating_point() else torch.bool)
        return columns
    return None


def _values(data: Any, idx: np.ndarray) -> torch.Tensor | None:
    """One value per sample (a data attribute: task labels, DER's logits) for samples `idx`, collated."""
    if isinstance(data, ConstantSequence):
        return torch.tensor([data._constant_value] * len(idx))
    if isinstance(data, torch.Tensor):
        return data[torch.from_numpy(idx)]
    if isinstance(data, FlatData):
        parts = []
        for part, local, at in _split(data, idx):
            values = _values(part, local)
            if values is None:
                return None
            parts.append(([values], at))
        merged = _merge(len(idx), parts)
        return merged[0] if merged is not None else None
    if isinstance(data, (list, tuple)):
        picked = [data[i] for i in idx.tolist()]
        if picked and all(isinstance(v, torch.Tensor) for v in picked):
            return torch.stack(picked)
        if all(type(v) is int for v in picked):
            return torch.tensor(picked)
    return None


class _Batches:
    """What a single-process DataLoader yields, from gathered tensors: one draw of the global RNG when
    an epoch starts (the DataLoader iterator's base seed), then the batch sampler's index lists."""

    def __init__(self, tensors: list[torch.Tensor], batch_sampler: Any, generator: Any) -> None:
        self.tensors = tensors
        self.batch_sampler = batch_sampler
        self.generator = generator

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        device = self.tensors[0].device
        for indices in self.batch_sampler:
            index = torch.as_tensor(indices, dtype=torch.long, device=device)
            yield [t[index] for t in self.tensors]

    def __len__(self) -> int:
        return len(self.batch_sampler)


class TensorBatchLoader:
    """Stands in for an experience's training loader; iterates like it, batch for batch."""

    def __init__(self, loader: Any, tensors: list[torch.Tensor]) -> None:
        self.loader = loader
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        loader = self.loader
        if isinstance(loader, MultiDatasetDataLoader):
            # Avalanche builds the samplers and hands them to `_make_pytorch_loader`: take that one step.
            loader._make_pytorch_loader = lambda datasets, batch_sampler: _Batches(
                self.tensors, batch_sampler, loader.loader_kwargs.get("generator"))
            try:
                batches = loader._get_loader()
            finally:
                del loader._make_pytorch_loader
            yield from batches
        else:
            yield from _Batches(self.tensors, loader.batch_sampler, loader.generator)


def tensor_loader(loader: Any, device: torch.device | None = None) -> TensorBatchLoader | None:
    """A tensor-indexing stand-in for `loader`, or None where it would not give the same batches."""
    if isinstance(loader, MultiDatasetDataLoader):
        kwargs = loader.loader_kwargs
        if kwargs.get("num_workers", 0):
            return None
        tensors = gather(loader.datasets, kwargs["collate_fn"])
    elif type(loader) is DataLoader:
        if loader.num_workers or loader.batch_sampler is None or not hasattr(loader.dataset, "__len__"):
            return None
        tensors = gather([loader.dataset], loader.collate_fn)
    else:
        return None
    if tensors is None:
        return None
    if device is not None and device.type == "cuda":
        if sum(t.element_size() * t.numel() for t in tensors) <= MAX_DEVICE_BYTES:
            tensors = [t.to(device) for t in tensors]
    return TensorBatchLoader(loader, tensors)


def memory_loader(strategy: Any, device: torch.device | None = None) -> Iterator[Any] | None:
    """A tensor-indexing stand-in for the endless memory loader that DER and ER-ACE build in their
    `_before_training_exp` (`cycle(DataLoader(buffer, batch_size_mem, shuffle, drop_last))`), or None."""
    buffer = getattr(getattr(strategy, "storage_policy", None), "buffer", None)
    batch_size = getattr(strategy, "batch_size_mem", None)
    if buffer is None or not batch_size or len(buffer) < batch_size:
        return None
    fast = tensor_loader(DataLoader(buffer, batch_size=batch_size, shuffle=True, drop_last=True), device)
    return cycle(fast) if fast is not None else None


class TensorBatchesPlugin(SupervisedPlugin):
    """Swap each experience's training loader for its tensor-indexing stand-in (list it after any plugin
    that builds the loader, such as Avalanche's ReplayPlugin), and a strategy's own memory loader too."""

    def __init__(self) -> None:
        super().__init__()
        self._original: Any = None
        self._original_memory: Any = None
        self.used = 0  # experiences trained from gathered tensors (for tests and diagnostics)
        self.memory_used = 0  # experiences whose memory minibatches came from gathered tensors

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._original = self._original_memory = None
        if not getattr(strategy, "train_epochs", 1):
            return  # no minibatch is drawn (a deployment update's memory experience): nothing to gather
        fast = tensor_loader(strategy.dataloader, torch.device(strategy.device))
        if fast is not None:
            self._original, strategy.dataloader = strategy.dataloader, fast
            self.used += 1
        # The strategy has just built its memory loader (not iterated yet, so no random draw is lost).
        if getattr(strategy, "replay_loader", None) is not None and not kwargs.get("num_workers", 0):
            memory = memory_loader(strategy, torch.device(strategy.device))
            if memory is not None:
                self._original_memory, strategy.replay_loader = strategy.replay_loader, memory
                self.memory_used += 1

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        # The gathered copy must not outlive the experience (nor land in a checkpoint).
        if self._original is not None:
            strategy.dataloader, self._original = self._original, None
        if self._original_memory is not None:
            if getattr(strategy, "replay_loader", None) is not None:  # DER drops its own before this hook
                strategy.replay_loader = self._original_memory
            self._original_memory = None
