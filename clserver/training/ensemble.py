"""The `ensemble` baseline: one expert per experience (Avalanche has no such strategy).

Every expert starts from the same initial weights and is trained on its experience only.
At inference, `confidence` answers with the expert whose softmax is most confident on each
sample; `average` averages the experts' probabilities.
"""
from __future__ import annotations

import copy

import torch
from avalanche.training.templates import SupervisedTemplate
from torch import nn


class ExpertEnsemble(nn.Module):
    def __init__(self, base: nn.Module, combine: str = "confidence") -> None:
        super().__init__()
        self.combine = combine
        self.initial_state = copy.deepcopy(base.state_dict())
        self.experts = nn.ModuleList([base])
        self.active = 0
        self.trained = 0

    def start_expert(self) -> None:
        """Before training a new experience: a fresh expert (the first one is used as is)."""
        if self.trained == 0:
            self.active = 0
        else:
            expert = copy.deepcopy(self.experts[0])
            expert.load_state_dict(self.initial_state)
            self.experts.append(expert)
            self.active = len(self.experts) - 1
        self.trained += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.experts[self.active](x)
        logits = torch.stack([expert(x) for expert in self.experts[: max(self.trained, 1)]])
        probs = logits.softmax(dim=-1)
        if self.combine == "average":
            return probs.mean(dim=0).log()
        best = probs.max(dim=-1).values.argmax(dim=0)
        return logits[best, torch.arange(x.shape[0])]


class Ensemble(SupervisedTemplate):
    """SupervisedTemplate that trains a new expert of an ExpertEnsemble per experience."""

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 combine: str = "confidence", **kwargs) -> None:
        ensemble = ExpertEnsemble(model, combine)
        super().__init__(model=ensemble, optimizer=optimizer, criterion=criterion, **kwargs)

    def model_adaptation(self, model: nn.Module | None = None) -> nn.Module:
        model = model if model is not None else self.model
        if self.is_training:
            model.start_expert()
        return super().model_adaptation(model)
