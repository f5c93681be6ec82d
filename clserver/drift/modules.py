"""Torch modules used by drift detection (imported when a detector is built)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Reshape(nn.Module):
    """Flat feature rows to the model's input shape (the penultimate-layer preprocess needs it)."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class Embedding(nn.Module):
    """A model's rows up to its penultimate layer, through its own `embed` (uploaded programs have one)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


class DomainClassifier(nn.Module):
    """A small classifier telling reference from test inputs (for the classifier detector)."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def encoder_costs(encoder: nn.Module, row: torch.Tensor) -> tuple[int, int]:
    """The encoder's parameter and buffer bytes, and its activations for one row: the outputs of all its
    modules on `row` (one forward pass), every one counted as if all were alive at once."""
    weights = sum(t.numel() * t.element_size() for t in (*encoder.parameters(), *encoder.buffers()))
    total = 0

    def add(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    hooks = [m.register_forward_hook(add) for m in encoder.modules()]
    try:
        with torch.no_grad():
            encoder(row)
    finally:
        for hook in hooks:
            hook.remove()
    return weights, total
