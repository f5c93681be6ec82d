"""Weights files for the model factory tests, made the way users make them."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from torch import nn

from modelfactory.architectures import architecture_build, architecture_params

MLP = {"architecture": "simple_mlp", "params": {"hidden_size": 16}}


def build(architecture: str = "simple_mlp", seed: int = 1, **params: Any) -> nn.Module:
    if not params and architecture == "simple_mlp":
        params = dict(MLP["params"])
    full = architecture_params(architecture=architecture, params=params)
    torch.manual_seed(seed)
    return architecture_build(architecture=architecture, params=full)


def saved(obj: Any, name: str = "weights.pt") -> SimpleUploadedFile:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="application/octet-stream")


def scripted(model: nn.Module, input_shape: list[int], name: str = "model.torchscript.pt") -> SimpleUploadedFile:
    model.eval()
    traced = torch.jit.trace(model, torch.zeros(2, *input_shape), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return SimpleUploadedFile(name, buffer.getvalue(), content_type="application/octet-stream")


def stored_files(root: Path) -> list[Path]:
    models = root / "files" / "models"
    return sorted(p for p in models.rglob("*") if p.is_file()) if models.exists() else []
