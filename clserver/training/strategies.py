"""The strategy and optimizer registries: name -> Avalanche builder + parameter schema.

Avalanche is imported inside the builders only, so the web process never loads it.
"""
from __future__ import annotations

from typing import Any


from claas_site.lazy import lazy_import
from claas_site.params import Param, Registry

# torch loads on first use, so the web process starts without it.
torch = lazy_import("torch")

STRATEGIES = Registry("strategy")
OPTIMIZERS = Registry("optimizer")

REPLAY_POLICIES = ("experience_balanced", "class_balanced", "reservoir")


def _mem(default: int = 200) -> Param:
    return Param("mem_size", "int", default, "Samples kept in the replay memory.", min=1, max=10_000_000)


def _replay_storage(policy: str, mem_size: int) -> Any:
    from avalanche.training.storage_policy import (
        ClassBalancedBuffer,
        ExperienceBalancedBuffer,
        ReservoirSamplingBuffer,
    )

    if policy == "reservoir":
        return ReservoirSamplingBuffer(max_size=mem_size)
    if policy == "class_balanced":
        return ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
    return ExperienceBalancedBuffer(max_size=mem_size, adaptive_size=True)


# Every builder receives (model, optimizer, criterion, common) and its own parameters;
# `common` holds train_mb_size, train_epochs, eval_mb_size, device, plugins and evaluator.

@STRATEGIES.register("naive", help="Fine-tune on each experience in turn: the lower bound, it forgets.",
                     family="baseline")
def naive(model, optimizer, criterion, common):
    from avalanche.training import Naive

    return Naive(model=model, optimizer=optimizer, criterion=criterion, **common)


@STRATEGIES.register("cumulative", help="Retrain on all data seen so far at every experience: the costly "
                     "upper bound of stateless retraining.", family="baseline")
def cumulative(model, optimizer, criterion, common):
    from avalanche.training import Cumulative

    return Cumulative(model=model, optimizer=optimizer, criterion=criterion, **common)


@STRATEGIES.register("joint_training", help="Offline upper bound: one training run on the whole stream at "
                     "once (the accuracy matrix has a single row).", family="baseline", offline=True)
def joint_training(model, optimizer, criterion, common):
    from avalanche.training import JointTraining

    return JointTraining(model=model, optimizer=optimizer, criterion=criterion, **common)


@STRATEGIES.register(
    "ensemble",
    help="One expert model per experience, each trained from the same initial weights. Prediction: "
         "'confidence' answers with the expert whose softmax is most confident, 'average' averages "
         "the experts' probabilities.",
    params=(Param("combine", "str", "confidence", "How experts' outputs are combined.",
                  choices=("confidence", "average")),),
    family="baseline",
)
def ensemble(model, optimizer, criterion, common, *, combine: str):
    from clserver.training.ensemble import Ensemble

    return Ensemble(model=model, optimizer=optimizer, criterion=criterion, combine=combine, **common)


@STRATEGIES.register(
    "replay",
    help="Experience replay: mix a memory of past samples into every minibatch.",
    params=(_mem(), Param("policy", "str", "experience_balanced", "Which samples the memory keeps.",
                          choices=REPLAY_POLICIES),
            Param("batch_size_mem", "int", 0, "Memory samples per minibatch (0: same as train_mb_size).",
                  min=0, max=100_000)),
    family="rehearsal", memory=True,
)
def replay(model, optimizer, criterion, common, *, mem_size: int, policy: str, batch_size_mem: int):
    from avalanche.training import Naive
    from avalanche.training.plugins import ReplayPlugin

    plugin = ReplayPlugin(mem_size=mem_size, batch_size_mem=batch_size_mem or None,
                          storage_policy=_replay_storage(policy, mem_size))
    common = {**common, "plugins": [plugin, *common["plugins"]]}
    return Naive(model=model, optimizer=optimizer, criterion=criterion, **common)


@STRATEGIES.register("gdumb", help="GDumb: keep a class-balanced memory and retrain from scratch on it.",
                     params=(_mem(),), family="rehearsal", memory=True)
def gdumb(model, optimizer, criterion, common, *, mem_size: int):
    from avalanche.training import GDumb

    return GDumb(model=model, optimizer=optimizer, criterion=criterion, mem_size=mem_size, **common)


@STRATEGIES.register(
    "ewc", help="Elastic Weight Consolidation: penalise changes to weights important for past experiences.",
    params=(Param("ewc_lambda", "float", 100.0, "Strength of the penalty.", min=0.0),
            Param("mode", "str", "separate", "One penalty per experience, or one running penalty.",
                  choices=("separate", "online")),
            Param("decay_factor", "float", 0.9, "Decay of the online penalty (mode online only).",
                  min=0.0, max=1.0)),
    family="regularization",
)
def ewc(model, optimizer, criterion, common, *, ewc_lambda: float, mode: str, decay_factor: float):
    from avalanche.training import EWC

    return EWC(model=model, optimizer=optimizer, criterion=criterion, ewc_lambda=ewc_lambda, mode=mode,
               decay_factor=decay_factor if mode == "online" else None, **common)


@STRATEGIES.register(
    "si", help="Synaptic Intelligence: importance accumulated along the training path.",
    params=(Param("si_lambda", "float", 1.0, "Strength of the penalty.", min=0.0),
            Param("eps", "float", 1e-7, "Damping term.", min=0.0)),
    family="regularization",
)
def si(model, optimizer, criterion, common, *, si_lambda: float, eps: float):
    from avalanche.training import SynapticIntelligence

    return SynapticIntelligence(model=model, optimizer=optimizer, criterion=criterion, si_lambda=si_lambda,
                                eps=eps, **common)


@STRATEGIES.register(
    "lwf", help="Learning without Forgetting: distil the previous model's outputs into the new one.",
    params=(Param("alpha", "float", 1.0, "Weight of the distillation loss.", min=0.0),
            Param("temperature", "float", 2.0, "Softmax temperature of the distillation.", min=0.01)),
    family="regularization",
)
def lwf(model, optimizer, criterion, common, *, alpha: float, temperature: float):
    from avalanche.training import LwF

    return LwF(model=model, optimizer=optimizer, criterion=criterion, alpha=alpha, temperature=temperature,
               **common)


@STRATEGIES.register(
    "mas", help="Memory Aware Synapses: importance from the sensitivity of the outputs.",
    # Avalanche's MAS importances are unnormalised, so its default strength (1.0) makes SGD at
    # lr 0.1 diverge on the digits streams; 0.01 trades old against new accuracy instead.
    params=(Param("lambda_reg", "float", 0.01, "Strength of the penalty.", min=0.0),
            Param("alpha", "float", 0.5, "Running-average weight of the importance.", min=0.0, max=1.0)),
    family="regularization",
)
def mas(model, optimizer, criterion, common, *, lambda_reg: float, alpha: float):
    from avalanche.training import MAS

    return MAS(model=model, optimizer=optimizer, criterion=criterion, lambda_reg=lambda_reg, alpha=alpha,
               **common)


@STRATEGIES.register(
    "gem", help="Gradient Episodic Memory: project gradients so past-memory losses do not increase.",
    params=(Param("patterns_per_exp", "int", 64, "Memory samples kept per experience.", min=1, max=100_000),
            Param("memory_strength", "float", 0.5, "Margin of the projection.", min=0.0)),
    family="rehearsal", memory=True,
)
def gem(model, optimizer, criterion, common, *, patterns_per_exp: int, memory_strength: float):
    from avalanche.training import GEM

    return GEM(model=model, optimizer=optimizer, criterion=criterion, patterns_per_exp=patterns_per_exp,
               memory_strength=memory_strength, **common)


@STRATEGIES.register(
    "agem", help="Averaged GEM: one projection against the average gradient of a memory sample.",
    params=(Param("patterns_per_exp", "int", 64, "Memory samples kept per experience.", min=1, max=100_000),
            Param("sample_size", "int", 64, "Memory samples per projection.", min=1, max=100_000)),
    family="rehearsal", memory=True,
)
def agem(model, optimizer, criterion, common, *, patterns_per_exp: int, sample_size: int):
    from avalanche.training import AGEM

    return AGEM(model=model, optimizer=optimizer, criterion=criterion, patterns_per_exp=patterns_per_exp,
                sample_size=sample_size, **common)


@STRATEGIES.register(
    "der", help="Dark Experience Replay: replay past samples with their logits.",
    params=(_mem(), Param("batch_size_mem", "int", 32, "Memory samples per minibatch.", min=1, max=100_000),
            Param("alpha", "float", 0.1, "Weight of the logit-matching loss.", min=0.0),
            Param("beta", "float", 0.5, "Weight of the label loss on memory samples.", min=0.0)),
    family="rehearsal", memory=True,
)
def der(model, optimizer, criterion, common, *, mem_size: int, batch_size_mem: int, alpha: float, beta: float):
    from avalanche.training import DER

    from clserver.training.der_memory import TensorMemoryWithLogits

    strategy = DER(model=model, optimizer=optimizer, criterion=criterion, mem_size=mem_size,
                   batch_size_mem=batch_size_mem, alpha=alpha, beta=beta, **common)
    strategy.storage_policy = TensorMemoryWithLogits(mem_size)  # the same memory, built in bulk
    return strategy


@STRATEGIES.register(
    "er_ace", help="ER-ACE: replay with an asymmetric cross-entropy on the new classes.",
    params=(_mem(), Param("batch_size_mem", "int", 32, "Memory samples per minibatch.", min=1, max=100_000)),
    family="rehearsal", memory=True,
)
def er_ace(model, optimizer, criterion, common, *, mem_size: int, batch_size_mem: int):
    from avalanche.training import ER_ACE

    return ER_ACE(model=model, optimizer=optimizer, criterion=criterion, mem_size=mem_size,
                  batch_size_mem=batch_size_mem, **common)


def memory_size(*, name: str, params: dict[str, Any], n_experiences: int) -> int:
    """How many stored samples a strategy wants (0 when it keeps no memory)."""
    if "mem_size" in params:
        return int(params["mem_size"])
    if "patterns_per_exp" in params:
        return int(params["patterns_per_exp"])
    return 0


# --- optimizers ------------------------------------------------------------------------------
_LR = Param("lr", "float", 0.1, "Learning rate.", min=1e-8, max=1e6)
_WD = Param("weight_decay", "float", 0.0, "L2 weight decay.", min=0.0, max=1.0)


@OPTIMIZERS.register("sgd", params=(_LR, Param("momentum", "float", 0.9, "Momentum.", min=0.0, max=0.999), _WD),
                     help="Stochastic gradient descent with momentum.")
def sgd(parameters, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam", params=(Param("lr", "float", 0.001, "Learning rate.", min=1e-8, max=1e6), _WD),
                     help="Adam.")
def adam(parameters, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", params=(Param("lr", "float", 0.001, "Learning rate.", min=1e-8, max=1e6),
                                      Param("weight_decay", "float", 0.01, "Decoupled weight decay.",
                                            min=0.0, max=1.0)),
                     help="AdamW (decoupled weight decay).")
def adamw(parameters, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
