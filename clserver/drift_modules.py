"""Torch modules used by drift detection (imported when a detector is built)."""
from __future__ import annotations

import torch
from torch import nn


class Reshape(nn.Module):
    """Flat feature rows to the model's input shape (the penultimate-layer preprocess needs it)."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class DomainClassifier(nn.Module):
    """A small classifier telling reference from test inputs (for the classifier detector)."""

    def __init__(self, n_features: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
