"""Training minibatches by tensor indexing: Avalanche's own batches, without per-sample calls.

Avalanche's loaders collate every minibatch from per-sample `dataset[i]` calls; for small models
that costs more than the forward and backward passes. When every dataset behind an experience's
loader is transform-free, `TensorBatchesPlugin` gathers each dataset once into tensors and serves
the same minibatches from them: the loader's own samplers pick the indices and the random draws
happen in the same order, so training gives the same model, faster. Strategies that draw a memory
minibatch beside each training minibatch from a loader of their own (DER, ER-ACE: `replay_loader`)
get the same treatment for that loader. Anything else (transforms, worker processes, datasets too
large to hold twice) keeps Avalanche's loader.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader
from avalanche.training.utils import cycle
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

# Gathered tensors are a second copy of the experience's data: beyond this, keep Avalanche's loader.
MAX_BYTES = 1 << 30
# On a GPU the gathered tensors live on the device (no host-to-device copy per minibatch) up to this.
MAX_DEVICE_BYTES = 512 << 20


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
