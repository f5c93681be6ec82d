"""The floor of benchmark 2: experience replay as a hand-written PyTorch loop, no framework.

Same arrays, model, seeds, optimizer and minibatch sizes as the plain Avalanche script
(bench.plain_avalanche, whose arguments it takes); each step indexes whole tensors (no
per-sample dataset calls), adds a minibatch from an experience-balanced memory, as
Avalanche's ReplayPlugin does, and evaluates with one forward pass per test batch.
"""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.plain_avalanche import arguments, build_model, deterministic_setup, stream_arrays


def seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def accuracy_row(model: nn.Module, stream: Any, device: torch.device, batch: int) -> list[float]:
    model.eval()
    row = []
    with torch.no_grad():
        for x, y in stream.test:
            X, Y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            correct = sum(int((model(X[i:i + batch]).argmax(1) == Y[i:i + batch]).sum())
                          for i in range(0, len(Y), batch))
            row.append(correct / max(len(Y), 1))
    model.train()
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    deterministic_setup(args)
    stream = stream_arrays(args)
    device = torch.device(args.device)
    data = [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in stream.train]
    seed_all(args.seed)
    model = build_model(args, stream.n_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loss_fn = nn.CrossEntropyLoss()
    seed_all(args.seed)
    memory: list[torch.Tensor] = []  # per past experience: indices kept into its training tensors
    train_times, row = [], []
    model.train()
    for i, (X, Y) in enumerate(data):
        t0 = time.perf_counter()
        if memory:
            mem_x = torch.cat([data[j][0][idx] for j, idx in enumerate(memory)])
            mem_y = torch.cat([data[j][1][idx] for j, idx in enumerate(memory)])
        for _ in range(args.epochs):
            order = torch.randperm(len(Y), device=device)
            mem_order = torch.randperm(len(mem_y), device=device) if memory else None
            m = 0
            for start in range(0, len(Y), args.train_mb):
                idx = order[start:start + args.train_mb]
                xb, yb = X[idx], Y[idx]
                if memory:
                    if m >= len(mem_order):
                        mem_order, m = torch.randperm(len(mem_y), device=device), 0
                    midx = mem_order[m:m + args.train_mb]
                    m += args.train_mb
                    xb, yb = torch.cat([xb, mem_x[midx]]), torch.cat([yb, mem_y[midx]])
                optimizer.zero_grad()
                loss_fn(model(xb), yb).backward()
                optimizer.step()
        # Experience-balanced memory: every experience seen keeps an equal share, a random subset.
        share = args.mem_size // (i + 1)
        memory = [idx[:share] for idx in memory] + [torch.randperm(len(Y), device=device)[:share]]
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_times.append(time.perf_counter() - t0)
        row = accuracy_row(model, stream, device, args.eval_mb)
    return {"train_time_s": sum(train_times), "per_experience_train_s": train_times,
            "final_accuracy": float(np.mean(row)), "accuracy_row": row, "device": str(device)}


if __name__ == "__main__":
    print(json.dumps(main()))
