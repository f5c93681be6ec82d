"""Benchmark 1's part of bench/BENCHMARKS.md: the fair protocol's figures as tables, targets and notes."""
from __future__ import annotations

import json
from typing import Any

from bench.report import Section, Table, Target
from bench.update_cost_config import (
    MEMORY,
    MODEL,
    OPTIMIZER,
    STRATEGY,
    TARGETS,
    THREADS,
    TRAIN_MB,
    FULL,
    Config,
    _sum,
)


def _seeds(seeds: tuple[int, ...]) -> str:
    contiguous = list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    listed = f"{seeds[0]}-{seeds[-1]}" if contiguous and len(seeds) > 3 else ", ".join(map(str, seeds))
    return f"{len(seeds)} (seeds {listed})"


def _ratio(value: float, span: tuple[float, float]) -> str:
    return f"{value:.1f}x ({span[0]:.1f}-{span[1]:.1f})"


def section(config: Config, rule: dict[str, Any], results: list[tuple[str, dict[str, Any]]]) -> Section:
    section = Section(1, "Update cost: stateful replay (DER) update against retraining from scratch")
    shown_rule = {k: rule[k] for k in ("patience", "min_epochs", "metric", "min_delta", "validation_fraction",
                                       "lr_drops", "lr_drop_factor")}
    section.setup = (
        f"Both arms: `simple_mlp` (hidden {MODEL['params']['hidden_size']}, dropout "
        f"{MODEL['params']['drop_rate']:g}), SGD lr {OPTIMIZER['lr']} momentum {OPTIMIZER['momentum']}, "
        f"minibatch {TRAIN_MB}, CPU, {THREADS} torch thread, and the same stopping rule: "
        f"`training.early_stopping` `{json.dumps(shown_rule)}` (the product's defaults but one learning-rate cut: "
        f"at the first plateau the best weights come back, the learning rate is divided by 10 and patience "
        f"starts again; training stops at the second plateau), "
        f"at most {config.max_epochs} epochs. Each experience's training data loses the held-out fraction "
        f"(the runner's split, by the seed), and each training stops on the held-out part of every experience "
        f"so far, keeping its best weights. **Stateful update**: one model, updated at each new experience "
        f"from the previous model with the `{STRATEGY['name']}` strategy (Dark Experience Replay, DER++) and "
        f"params `{json.dumps(STRATEGY['params'])}`: a memory of "
        f"{MEMORY} samples, or the stream's whole training data where it has fewer (the API refuses a larger "
        f"`mem_size`), class-balanced, reservoir within each class, with the model's logits for each, "
        f"one memory minibatch beside each new-data minibatch, loss = cross-entropy on the new data + alpha x "
        f"MSE to the stored logits + beta x cross-entropy on the memory labels. **Cumulative retraining**: at "
        f"each new experience a fresh model (same architecture, same initial weights, same optimizer and rule) "
        f"trained from scratch on all the training data so far, until it stops improving. "
        f"Repetitions of the whole stream, both arms in each, with seeds for initial weights, shuffling and "
        f"held-out split: {_seeds(config.seeds)} on permuted_digits, {_seeds(config.ordered_seeds)} on the "
        f"uploaded stream (small, so a seed moves its gap by up to 2 points, and cheap); figures are the median over "
        f"the repetitions, with the range (min-max) in brackets. Time is `strategy.train()` only (the "
        f"runner's timer, the per-epoch held-out scoring included); samples are those that went through the "
        f"model in training, memory samples included. Accuracy is the mean test accuracy over the "
        f"experiences seen so far, after the update. The uploaded stream is sklearn's digits in a random "
        f"order (each digit {config.copies}x) rotated by an angle that grows slowly from 0 to 90 degrees along "
        f"the rows, uploaded as NPZ through the dataset service and cut by the `dataset` benchmark's "
        f"`time_ordered` scenario.")
    rows = []
    for _, r in results:
        (acc_s, acc_c), ((lo_s, hi_s), (lo_c, hi_c)) = r["accuracy"], r["accuracy_range"]
        rows.append([
            r["name"], _ratio(r["last_time_ratio"], r["last_time_ratio_range"]), f"{r['last_samples_ratio']:.1f}x",
            f"{r['last_epochs'][0]:g} / {r['last_epochs'][1]:g}",
            _ratio(r["total_time_ratio"], r["total_time_ratio_range"]), f"{r['total_samples_ratio']:.1f}x",
            f"{r['mean_epochs'][0]:.1f} / {r['mean_epochs'][1]:.1f}",
            f"{acc_s:.3f} ({lo_s:.3f}-{hi_s:.3f})", f"{acc_c:.3f} ({lo_c:.3f}-{hi_c:.3f})",
            f"{r['gap'] * 100:+.1f} ({r['gap_range'][0] * 100:+.1f} to {r['gap_range'][1] * 100:+.1f})"])
    section.tables.append(Table(
        ["stream", "last update: time ratio", "samples ratio", f"epochs {STRATEGY['name']} / cumulative",
         "whole stream: time ratio", "samples ratio", "mean epochs per update", f"final acc. {STRATEGY['name']}",
         "final acc. cumulative", "gap (points)"],
        rows, f"Medians over the repetitions (range in brackets). Ratios are cumulative retraining over the "
        f"`{STRATEGY['name']}` update (higher: the update is cheaper); the gap is cumulative minus "
        f"`{STRATEGY['name']}` in points, per seed, then its median."))
    rows = []
    for _, r in results:
        for rep in r["repetitions"]:
            s, c = rep["stateful"], rep["cumulative"]
            rows.append([r["name"], rep["seed"], s[-1]["time_s"], c[-1]["time_s"], f"{rep['last_time_ratio']:.1f}x",
                         f"{rep['last_samples_ratio']:.1f}x", f"{rep['last_epochs'][0]} / {rep['last_epochs'][1]}",
                         _sum(s, "time_s"), _sum(c, "time_s"), f"{rep['total_time_ratio']:.1f}x",
                         f"{rep['total_samples_ratio']:.1f}x", rep["accuracy"][0], rep["accuracy"][1],
                         f"{rep['gap'] * 100:+.1f}"])
    section.tables.append(Table(
        ["stream", "seed", f"last: {STRATEGY['name']} s", "last: cumulative s", "time ratio", "samples ratio",
         "epochs", f"all: {STRATEGY['name']} s", "all: cumulative s", "time ratio", "samples ratio",
         f"final acc. {STRATEGY['name']}", "final acc. cumulative", "gap"], rows, "Each repetition:"))
    for _, r in results:
        first = r["repetitions"][0]
        rows = [[i + 1, a["time_s"], a["samples"], a["epochs"], b["time_s"], b["samples"], b["epochs"],
                 f"{b['time_s'] / a['time_s']:.1f}x", f"{b['samples'] / a['samples']:.1f}x", a["accuracy"],
                 b["accuracy"]] for i, (a, b) in enumerate(zip(first["stateful"], first["cumulative"]))]
        section.tables.append(Table(
            ["update", f"{STRATEGY['name']} s", "samples", "epochs", "cumulative s", "samples", "epochs",
             "time ratio", "samples ratio", f"{STRATEGY['name']} acc.", "cumulative acc."], rows,
            f"**{r['name']}**, update by update (seed {first['seed']}):"))
    full = config == FULL  # the quick smoke version's small streams are not what the targets are about
    for key, r in results:
        ratio, gap = TARGETS[key]
        section.targets.append(Target(f"{r['name']}: last-update cost ratio (time, median)",
                                      f"{r['last_time_ratio']:.1f}x", f">= {ratio:g}x",
                                      r["last_time_ratio"] >= ratio if full else None))
        section.targets.append(Target(f"{r['name']}: final accuracy, cumulative minus {STRATEGY['name']} (median)",
                                      f"{r['gap'] * 100:+.2f} points", f"<= {gap * 100:g} point",
                                      r["gap"] <= gap + 1e-9 if full else None))
    most = max(s["epochs"] for _, r in results for rep in r["repetitions"] for s in rep["cumulative"])
    cap = (f"the cap of {config.max_epochs} epochs is not what stops cumulative retraining (its longest training "
           f"in this run: {most} epochs)" if most < config.max_epochs else
           f"the cap of {config.max_epochs} epochs stopped cumulative retraining at least once in this run")
    section.notes.append(
        f"Fair by construction: one rule, one held-out split, one model and optimizer for both arms; {cap}. The "
        "stateful arm's settings are strategy params a user sets through the API; no product default was changed "
        "for it.")
    section.notes.extend(NOTES)
    section.data = {"results": [r for _, r in results], "config": config.__dict__, "rule": rule,
                    "strategy": STRATEGY}
    return section


# How the configuration was chosen: separate exploration runs on this machine (2026-12-02), not this run.
NOTES = [
    "Levers measured for the stateful arm (final accuracy on permuted_digits, hidden 1024, patience 3, seed 0 "
    "unless said; cumulative 0.981). Memory size (alpha/beta 1/1): 500: 0.936, 2000: 0.960, 5000: 0.970, the "
    "strongest lever, but the memory is rebuilt (Avalanche's concatenation) and gathered at every update, a "
    "fixed cost that grows with it: 0.07 s at 500, 0.13 s at 2000, 0.19 s at 5000 at the 20th update, against "
    "about 0.08 s per epoch. The gather is now by index arrays (`tensor_batches.bulk_columns`, same tensors): "
    "at 5000 samples 18 ms against 79 ms sample by sample; Avalanche's own memory update (logits, class "
    "subsets, resize) stays at about 75 ms. This benchmark at memory 5000, patience 2 (one full run, seeds "
    "0-2, load average 3-5 on 2 cores): permuted_digits 10.7x in time (4.5-21.6), 17.4x in samples, 0.967 "
    "against 0.981, gap +1.5 points (+1.0 to +1.7); uploaded stream 11.3x (5.7-14.5), gap +1.6 (+0.6 to "
    "+1.7): no nearer the 1-point targets than memory 2000, which stayed until the learning-rate cut "
    "(below). alpha/beta at memory 2000: 0.1/0.5 (the default) 0.954, 0.955 (seeds 0, 1); 0.5/1.0 0.966, "
    "0.965, 0.962 (seeds 0-2); 1.0/0.5 0.962, "
    "0.965, 0.965; 1.0/1.0 0.960; 2.0/1.0 diverged (0.225, memory 500). Memory minibatch against the new-data "
    "minibatch of 32: 64: 0.963 at 1.8x the last update's samples; 16 stopped after 4 epochs (0.944 at memory "
    "3000, 0.921 at 5000). Learning rate (memory 500): 0.1: 0.936, 0.05: 0.935, 0.02: 0.929. Patience "
    "(memory 2000, 0.5/1.0): 2: 0.962 against 0.981 at 6.5 epochs per update; 3: 0.966 against 0.981 at 8.8.",
    "Shared levers (patience 2, memory 2000, 0.5/1.0, seed 0): hidden 512: 0.951 against 0.965 (cumulative "
    "0.977, 0.980 on seeds 1, 2), 1024: 0.962 against 0.981, 2048: 0.966 against 0.984. This benchmark at "
    "hidden 512 (one full run, seeds 0-2): permuted_digits last update 12.7x in time (8.1-19.7), 24.8x in "
    "samples, gap +2.5 points (+1.4 to +2.6); uploaded stream 4.1x (2.2-10.7), gap +1.0 (-1.9 to +1.5), in "
    "about the same time as at 1024: the cost is per minibatch more than per unit. Training minibatch "
    "64 in both arms: 0.952 against 0.977 (cumulative needing 21 epochs). Uploaded stream (hidden 1024, "
    "patience 3, seeds 0-2; cumulative 0.969, 0.971, 0.960), memory 500: 1.0/1.0 0.947, 0.947, 0.945; "
    "0.5/1.0 0.945, 0.946, 0.966; default 0.957, 0.950, 0.956; memory 2000, 1.0/1.0: 0.950, 0.945, 0.956. "
    "No alpha/beta wins on both streams (0.5/1.0 by about a point on permuted_digits, the default ties or "
    "wins on the uploaded stream), so DER's defaults stay; the benchmark sets 0.5/1.0.",
    "Closing the accuracy gap (seeds 0-2, gap = cumulative minus DER in points, median, against cumulative "
    "retraining with the product's rule: permuted_digits 0.981, 0.980, 0.981; uploaded 0.963, 0.955, 0.960; "
    "memory 2000, memory minibatch 32 unless said): the rule before, +2.05 on permuted_digits / +1.20 on the "
    "uploaded stream (last update 16.1x / 8.0x fewer samples). Within an update: learning rate 0.03 for the "
    "updates after the first +2.66 / +3.15, 0.01 +4.74 / +5.28 (a warm start wants full steps here); cosine "
    "decay over 10 epochs +2.09 (seed 0); stopping on the current experience's held-out data only +2.26 / "
    "+2.69; min_epochs 8 +1.60 / +0.46; one more epoch at lr/10 after the stop +1.60 / +0.74; one "
    "learning-rate cut (x0.1) at the first plateau +1.77 / +0.09 (updates only), +2.02 / +0.83 (every "
    "training), two cuts +1.67 / +0.46; the cut with alpha/beta 1/1 +1.92 / +1.30; memory minibatch 128 "
    "+1.94 / +0.00 (the uploaded stream's whole run only 1.6x fewer samples than retraining); memory 5000 "
    "with minibatch 64 +1.38 / +0.74, with the cut +1.00 / +0.28, with minibatch 64 and the cut +0.92 / "
    "+0.00. Memory size is what moves permuted_digits; nothing within an update does on its own. But the "
    "cut (and the epoch at lr/10) helps retraining from scratch on the uploaded stream too: with one cut "
    "cumulative retraining reaches 0.969, 0.963, 0.972 there (+0.9; an epoch at lr/10 after the stop: "
    "+1.0), and is unchanged on permuted_digits (0.981, 0.980, 0.981, the cut never finds a better epoch). "
    "So the cut (`training.early_stopping.lr_drops` 1) is in both arms' rule, and against that: memory 2000 "
    "+1.77 / +1.02, memory 5000 +1.00 / +1.48, memory 5000 with minibatch 64 +0.92 / +0.83 (per seed "
    "+1.17, +0.92, +0.70 / +2.13, +0.83, +0.74), the only setting found within a point on both streams, "
    "now the benchmark's. Its price: the update trains 9.9 epochs on average against 6.6 and each epoch "
    "costs about 15 % more (0.059 against 0.052 s on permuted_digits' last five updates, same conditions), "
    "about 1.8x the update's time over the whole stream, while the cut adds 14 % to 30 % to retraining's "
    "epochs: the last update's samples ratio falls from 16.1x to 9.9x on permuted_digits and from 8.0x to "
    "4.6x on the uploaded stream, and the time ratio by about a third (the run that found it, with other "
    "training jobs on the machine: 6.0x (4.5-14.6) and 4.8x (4.0-7.7)). Memory 5000 is more than the "
    "uploaded stream's whole training data (4,852 samples): there the memory ends up holding every past "
    "sample, though each update still trains only over its new data, with one 64-sample memory minibatch "
    "beside each new minibatch.",
    "The memory held as tensors (2026-12-02, `clserver/training/der_memory.py`: the same samples, logits and "
    "random draws as Avalanche's memory, so the same model, bit for bit): the update's fixed cost "
    "(the memory's update and two flattenings of its dataset tree per update, about 0.2 s at memory 5000 "
    "under a profiler) falls to a few tensor copies, so a larger memory no longer costs time at each "
    "update. One exploration run on permuted_digits (seeds 0-2, last update against retraining from "
    "scratch on the same machine): memory 5000 with Avalanche's memory 14.3x in time, gap +1.04 points; "
    "with the tensor memory 15.3x, +1.04 (the same epochs: 11, 9, 6); memory 10000 16.4x, +0.71, now the "
    "benchmark's. On the uploaded stream the memory holds every training sample at either size (the "
    "benchmark sets the API's cap, the stream's training samples). There min_delta 0.002 / 0.005 (+1.52 / "
    "+2.03 points on permuted_digits), two cuts (+1.67 on the uploaded stream) and patience 3 (+1.67) all "
    "widened the gap.",
    "The uploaded stream's gap is mostly its seed (2026-12-03, this benchmark's settings, exploration runs "
    "apart from the benchmark, gaps in points, cumulative minus DER): seeds 0-2 gave +2.31, +1.11, -0.09 "
    "(median +1.11, what two full runs in a row recorded with 3 repetitions); seeds 3-9 +1.48 at most and "
    "-1.39 at least; median over seeds 0-9 +0.69, over seeds 10-19 (never used to choose anything) -0.14. "
    "Cumulative retraining itself ends anywhere from 0.937 to 0.976 over those 20 seeds: about 54 test rows "
    "per experience, one row 0.19 points. Hence 10 repetitions for that stream (about 10 s each). Levers "
    "on seeds 0-9 (median gap): alpha 0.1 +0.19 (seeds 10-19: -0.51), alpha 0.2 +0.42, alpha 0.3 +0.79, "
    "alpha 1.0 with beta 1.0 +1.48 (seeds 0-4), alpha 0.1 with beta 0.5 +1.20 (seeds 0-4), memory "
    "minibatch 96 +0.83, held-out fraction 0.2 in both arms -0.00: all within the seeds' spread, so the "
    "settings stay.",
]
