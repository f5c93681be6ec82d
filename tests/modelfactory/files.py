"""Weights files for the model factory tests, made the way users make them."""
from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

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


# --- hostile archives (issue 13) -------------------------------------------------------------
class _Thief(nn.Module):
    """A linear layer whose TorchScript `__setstate__` reads `read` into its weight and writes each of `writes`.

    torch.jit.load runs `__setstate__`: this is the program an attacker uploads as "weights".
    """

    def __init__(self, inputs: int, outputs: int, read: str, writes: list[str], floats: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(outputs, inputs), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(outputs), requires_grad=False)
        self.read = read
        # Typed, so that every instance scripts to the same TorchScript class (an empty list has no type).
        self.writes = torch.jit.Attribute(writes, list[str])
        self.floats = floats

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, torch.Tensor, str, list[str], int, bool]:
        return self.weight, self.bias, self.read, self.writes, self.floats, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, torch.Tensor, str, list[str], int, bool]) -> None:
        self.weight, self.bias, self.read, self.writes, self.floats, self.training = state
        if self.read != "":
            stolen = torch.from_file(self.read, shared=False, size=self.floats, dtype=torch.float32)
            self.weight.view(-1)[: self.floats].copy_(stolen)
        for path in self.writes:
            written = torch.from_file(path, shared=True, size=self.floats, dtype=torch.float32)
            written.fill_(7.0)
            # Used afterwards, so TorchScript does not drop the write as dead code.
            self.bias.add_(written.sum() * 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


class _ThiefMLP(nn.Module):
    """The state_dict keys and shapes of simple_mlp with hidden_size 16, so the stolen weights would fit."""

    def __init__(self, thief: _Thief) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), thief, nn.ReLU(), nn.Dropout(0.5))
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def stealing_archive(*, read: Path | None = None, writes: tuple[Path, ...] = (), floats: int = 16) -> bytes:
    """A real TorchScript archive (torch.jit.script + torch.jit.save) that reads/writes server files on load."""
    thief = _Thief(64, 16, str(read or ""), [str(p) for p in writes], floats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted_module = torch.jit.script(_ThiefMLP(thief))
        buffer = io.BytesIO()
        torch.jit.save(scripted_module, buffer)
    return buffer.getvalue()


def rezipped(raw: bytes, rename: Callable[[str], str | None]) -> bytes:
    """The archive with each member renamed (None drops it), as an attacker disguises a TorchScript file."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            name = rename(info.filename)
            if name is not None:
                target.writestr(name, source.read(info))
    return out.getvalue()
