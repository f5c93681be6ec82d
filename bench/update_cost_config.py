"""Benchmark 1's settings, shared by the benchmark (bench/update_cost.py) and its report
(bench/update_cost_report.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Both arms: one wide hidden layer without dropout. Cumulative retraining does better without dropout too,
# and DER's stored logits (taken in eval mode) match the training outputs only then.
MODEL = {"architecture": "simple_mlp", "params": {"hidden_size": 1024, "drop_rate": 0.0}}
OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
# The stateful arm: Dark Experience Replay (DER++: labels and stored logits of the memory samples), as a
# user sets it through the API (strategy params); bench/update_cost_report.py's NOTES say how each was chosen.
MEMORY = 10000  # capped per stream at its training samples, as the API caps mem_size (stream_strategy)
STRATEGY = {"name": "der", "params": {"mem_size": MEMORY, "batch_size_mem": 64, "alpha": 0.5, "beta": 1.0}}


def stream_strategy(n_train: int) -> dict[str, Any]:
    """STRATEGY for a stream of `n_train` training samples: the API refuses a `mem_size` above that, so a
    user sets at most the whole stream (where the memory then ends up holding every past sample)."""
    return {**STRATEGY, "params": {**STRATEGY["params"], "mem_size": min(MEMORY, n_train)}}
# The rule both arms stop by: `training.early_stopping` with the product's defaults (patience 2) but one
# learning-rate cut (`lr_drops` 1: at the first plateau the best weights come back and the lr is divided by
# 10), on the held-out part of every experience so far. MAX_EPOCHS is only a cap: both arms stop before it.
RULE = {"lr_drops": 1}
MAX_EPOCHS = 30
SEEDS = (0, 1, 2)
# The uploaded stream is small (about 54 held-out and 54 test rows per experience) and cheap (about 10 s a
# repetition): one seed moves its gap by up to 2 points either way, so it gets 10 repetitions.
ORDERED_SEEDS = tuple(range(10))
TRAIN_MB = 32
EVAL_MB = 256
DRIFT_DATASET = "drifting-digits"
TARGETS = {"permuted": (14.0, 0.01), "uploaded": (5.0, 0.01)}  # last-update time ratio, accuracy gap


@dataclass
class Config:
    permuted_experiences: int
    ordered_experiences: int
    max_epochs: int
    copies: int  # how many times the drifting dataset holds each digit
    seeds: tuple[int, ...]  # permuted_digits' repetitions
    ordered_seeds: tuple[int, ...]  # the uploaded stream's repetitions


FULL = Config(permuted_experiences=20, ordered_experiences=10, max_epochs=MAX_EPOCHS, copies=3, seeds=SEEDS,
              ordered_seeds=ORDERED_SEEDS)
QUICK = Config(permuted_experiences=4, ordered_experiences=3, max_epochs=3, copies=1, seeds=SEEDS,
               ordered_seeds=SEEDS)


# One torch thread for both arms: on a small shared machine more threads make timings erratic (threads
# spin while another process holds the core).
THREADS = 1


def _sum(steps: list[dict[str, Any]], key: str) -> float:
    return sum(s[key] for s in steps)
