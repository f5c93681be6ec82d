"""An uploaded program as a trainable nn.Module: train()/eval() switch dropout and batch norm in its graph.

A module from `ExportedProgram.module()` refuses train() and eval() and keeps whatever mode it was
exported in. ProgramModule rewrites the mode flag of every dropout and batch-norm call in the graph
when the mode changes (and recompiles it), so dropout drops and batch norm uses and updates batch
statistics while training, and both are deterministic in evaluation. Its state_dict has the
program's own names (`layer.weight`, `bn.running_mean`): parameters and buffers are what a version holds.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelfactory.program_ops import ATEN_PREFIX, TRAINING_FLAG
from modelfactory.programs import program_load, program_read

PREFIX = "program."
_CACHE_LOCK = threading.Lock()
_CACHE: OrderedDict[str, Any] = OrderedDict()
CACHED_PROGRAMS = 4


def _mode_set(graph: torch.fx.Graph, training: bool) -> None:
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        index = TRAINING_FLAG.get(node.target._schema.name.split("::")[-1])
        if index is not None and len(node.args) > index:
            args = list(node.args)
            args[index] = training
            node.args = tuple(args)


def _penultimate(program: torch.fx.GraphModule) -> torch.fx.GraphModule | None:
    """The graph up to the input of the final linear layer, when the output is one; shares the parameters."""
    graph = program.graph
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    result = result[0] if isinstance(result, (tuple, list)) and len(result) == 1 else result
    if not isinstance(result, torch.fx.Node) or str(result.target) != "aten.linear.default":
        return None
    copied = torch.fx.Graph()
    mapping: dict[torch.fx.Node, torch.fx.Node] = {}
    copied.graph_copy(graph, mapping)
    copied.output(mapping[result.args[0]])
    features = torch.fx.GraphModule(program, copied)
    features.graph.eliminate_dead_code()
    features.recompile()
    return features


def _lean(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The same graph and tensors without the exported module's per-call wrapping (pytree flattening of the
    inputs, input-constraint hooks, the guard call): about a quarter of a small model's training step.
    The inputs are checked once at registration and reshaped by ProgramModule on every call."""
    graph = torch.fx.Graph()
    value = graph.graph_copy(program.graph, {})
    graph.output(value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    return torch.fx.GraphModule(program, graph)


class ProgramModule(nn.Module):
    """A checked torch.export program; inputs are reshaped to its input shape like the zoo's models."""

    def __init__(self, program: nn.Module, *, params: dict[str, Any]) -> None:
        super().__init__()
        self.params = dict(params)
        self.input_shape = tuple(params["input_shape"])
        self.program = _lean(program)
        # Shares the program's parameters; not a submodule, so the state_dict holds each tensor once.
        self.__dict__["_features"] = _penultimate(self.program)
        self._mode(True)

    @property
    def has_features(self) -> bool:
        return self.__dict__["_features"] is not None

    def _mode(self, training: bool) -> None:
        for module in (self.program, self.__dict__["_features"]):
            if module is not None:
                _mode_set(module.graph, training)
                module.recompile()

    def train(self, mode: bool = True) -> ProgramModule:
        # The exported module's own train() raises: set the flags on every module and in the graph.
        for module in self.modules():
            module.training = mode
        self._mode(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x.reshape(x.shape[0], *self.input_shape))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.__dict__["_features"]
        if features is None:
            raise ValueError("The program does not end in a linear layer; it has no penultimate layer.")
        out = features(x.reshape(x.shape[0], *self.input_shape))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.flatten(1)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        full = super().state_dict(*args, **kwargs)
        inner = prefix + PREFIX
        return OrderedDict((prefix + k[len(inner):] if k.startswith(inner) else k, v) for k, v in full.items())

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return super().load_state_dict({PREFIX + k: v for k, v in state_dict.items()}, strict=strict, assign=assign)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Checkpoints and deepcopy rebuild from the stored, checked program and then load the tensors.
        return _restore, (self.params, super().state_dict(), self.training)


def _restore(params: dict[str, Any], full_state: dict[str, Any], training: bool) -> ProgramModule:
    module = program_build(**params)
    nn.Module.load_state_dict(module, full_state)
    return module.train(training)


def program_path(sha256: str) -> Path:
    from django.conf import settings

    return settings.DATA_DIR / "files" / "programs" / f"{sha256}.pt2"


def program_build(*, program: str, input_shape: list[int], num_classes: int) -> ProgramModule:
    """A fresh module of a stored program (its own copy of the parameters)."""
    from django.conf import settings

    with _CACHE_LOCK:
        archive = _CACHE.get(program)
        if archive is not None:
            _CACHE.move_to_end(program)
    if archive is None:
        archive = program_read(source=program_path(program), max_unpacked_bytes=settings.MAX_UPLOAD_BYTES)
        with _CACHE_LOCK:
            _CACHE[program] = archive
            while len(_CACHE) > CACHED_PROGRAMS:
                _CACHE.popitem(last=False)
    module = program_load(archive=archive).module()
    params = {"program": program, "input_shape": list(input_shape), "num_classes": num_classes}
    if math.prod(archive.input_shape) != math.prod(input_shape):
        raise ValueError(f"program {program} takes inputs of shape {archive.input_shape}, not {input_shape}")
    return ProgramModule(module, params=params)


def program_cost(*, archive: Any) -> Any:
    """Parameters, per-sample activation bytes and FLOPs of a checked program, on the meta device.

    The program is built with meta tensors (nothing allocated, nothing computed) and run on a batch of
    one; every operator's outputs count as activations, as the zoo's leaf-module outputs do.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves
    from torch.utils.flop_counter import FlopCounterMode

    from modelfactory.costs import ModelCost

    class Activations(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    Activations.total += leaf.numel() * leaf.element_size()
            return out

    module = program_load(archive=archive, device="meta").module()
    counter = FlopCounterMode(display=False)
    with counter, Activations(), torch.no_grad():
        module(torch.zeros(1, *archive.input_shape, device="meta"))
    return ModelCost(archive.parameters, Activations.total, counter.get_total_flops())
