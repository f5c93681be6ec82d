"""DER's replay memory held as tensors: the same samples, logits and order as Avalanche's, built in bulk.

Avalanche's `ClassBalancedBufferWithLogits` keeps the memory as a tree of dataset concatenations and
subsets: each update computes the new data's logits sample by sample, and every read of `.buffer`
(twice per update: DER's memory loader and the tensor batches that replace it) flattens the tree
again. At a memory of 5000 that was about a sixth of a warm-started update's time on 8x8 digits.
`TensorMemoryWithLogits` keeps each class's share as tensors sorted by their reservoir weights, draws
the same random numbers in the same order, and builds `.buffer` once per update from those tensors, so
training sees the same minibatches as with Avalanche's memory. An experience whose samples cannot be
gathered in bulk (a dataset with transforms) hands the memory over to Avalanche's class for good.
"""
from __future__ import annotations

from typing import Any

import torch
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset, make_avalanche_dataset
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.supervised.der import ClassBalancedBufferWithLogits
from torch.utils.data import default_collate

from clserver.training.tensor_batches import bulk_columns, transform_free


def memory_dataset(columns: list[torch.Tensor]) -> Any:
    """An Avalanche dataset whose samples are (x, y, task label, logits) rows of `columns`, as DER reads them."""
    x, y, t, logits = columns
    # One task label for all (the usual case) is a constant, which the tensor batches gather in bulk.
    same = len(t) > 0 and bool((t == t[0]).all())
    base = _make_taskaware_tensor_classification_dataset(x, y, task_labels=int(t[0]) if same else t.tolist())
    return make_avalanche_dataset(base, data_attributes=[
        TensorDataAttribute(FlatData([logits], discard_elements_not_in_indices=True), name="logits",
                            use_in_getitem=True)])


class _ClassShare:
    """One class's part of the memory: (x, y, t, logits) tensors, rows sorted by reservoir weight, highest
    first; `merge` and `resize` are Avalanche's `ReservoirSamplingBuffer.update_from_dataset` and `resize`."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.columns: list[torch.Tensor] | None = None
        self.weights = torch.zeros(0)

    def __len__(self) -> int:
        return 0 if self.columns is None else len(self.columns[0])

    def merge(self, columns: list[torch.Tensor]) -> None:
        new_weights = torch.rand(len(columns[0]))
        weights = torch.cat([new_weights, self.weights])
        if self.columns is not None:
            columns = [torch.cat([new, old]) for new, old in zip(columns, self.columns)]
        ordered, order = weights.sort(descending=True)
        keep = order[: self.max_size]
        self.columns = [c[keep] for c in columns]
        self.weights = ordered[: self.max_size]

    def resize(self, new_size: int) -> None:
        self.max_size = new_size
        if self.columns is not None and len(self) > new_size:
            self.columns = [c[:new_size] for c in self.columns]
            self.weights = self.weights[:new_size]

    @property
    def buffer(self) -> Any:
        return memory_dataset(self.columns) if self.columns is not None else None


class TensorMemoryWithLogits(ClassBalancedBufferWithLogits):
    """DER's class-balanced reservoir memory (adaptive: `max_size` shared equally by the classes seen)."""

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size, adaptive_size=True)
        self._dataset: Any = None
        self._avalanche: ClassBalancedBufferWithLogits | None = None

    @property
    def buffer(self) -> Any:
        if self._avalanche is not None:
            return self._avalanche.buffer
        if self._dataset is None:
            shares = [g.columns for g in self.buffer_groups.values() if g.columns is not None]
            if not shares:
                return super().buffer  # Avalanche's empty dataset
            self._dataset = memory_dataset([torch.cat(parts) for parts in zip(*shares)])
        return self._dataset

    @buffer.setter
    def buffer(self, new_buffer: Any) -> None:
        raise AttributeError("the memory is set through update() and resize()")

    def resize(self, strategy: Any, new_size: int) -> None:
        if self._avalanche is not None:
            self._avalanche.resize(strategy, new_size)
            return
        self.max_size = new_size
        for share, size in zip(self.buffer_groups.values(), self.get_group_lengths(len(self.buffer_groups))):
            share.resize(size)
        self._dataset = None

    def update(self, strategy: Any, **kwargs: Any) -> None:
        if self._avalanche is not None:
            self._avalanche.update(strategy, **kwargs)
            return
        new_data = strategy.experience.dataset.eval()
        columns = bulk_columns(new_data, default_collate) if transform_free(new_data) else None
        if columns is None or len(columns) != 3:
            self._avalanche = self._as_avalanche()
            self._avalanche.update(strategy, **kwargs)
            return
        x, y, t = columns
        logits = self._logits(strategy, x)
        labels = y.tolist()
        classes = list(dict.fromkeys(int(v) for v in labels))  # in order of first appearance, as Avalanche
        self.seen_classes.update(classes)
        sizes = dict(zip(self.seen_classes, self.get_group_lengths(len(self.seen_classes))))
        for c in classes:
            at = (y == c).nonzero().flatten()
            rows = [x[at], y[at], t[at], logits[at]]
            share = self.buffer_groups.get(c)
            if share is None:
                share = self.buffer_groups[c] = _ClassShare(sizes[c])
                share.merge(rows)
            else:
                share.merge(rows)
                share.resize(sizes[c])
        for c, share in self.buffer_groups.items():
            share.resize(sizes[c])
        self._dataset = None

    @staticmethod
    @torch.no_grad()
    def _logits(strategy: Any, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs for `x` in eval mode, in minibatches of `train_mb_size` (as Avalanche's
        `compute_dataset_logits`, whose data loader draws one number from the global generator first)."""
        torch.empty((), dtype=torch.int64).random_()
        model = strategy.model
        was_training = model.training
        model.eval()
        batch = strategy.train_mb_size
        outs = [model(x[start:start + batch].to(strategy.device)).detach().cpu() for start in range(0, len(x), batch)]
        model.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0)

    def _as_avalanche(self) -> ClassBalancedBufferWithLogits:
        """Avalanche's memory holding the same samples, weights and sizes."""
        memory = ClassBalancedBufferWithLogits(self.max_size, adaptive_size=True)
        memory.seen_classes = set(self.seen_classes)
        for c, share in self.buffer_groups.items():
            group = ReservoirSamplingBuffer(share.max_size)
            if share.columns is not None:
                group.buffer = memory_dataset(share.columns)
                group._buffer_weights = share.weights
            memory.buffer_groups[c] = group
        self.buffer_groups = {}
        return memory
