"""Continual-learning metrics from an accuracy matrix (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018).

R[i][j] is the accuracy on experience j's test data after training on experience i;
b[j] is the accuracy of the initial model on experience j (for forward transfer).
"""
from __future__ import annotations

from typing import Sequence


def final_accuracy(R: Sequence[Sequence[float]]) -> float:
    """Mean of the last row: accuracy over all experiences after the whole stream."""
    return sum(R[-1]) / len(R[-1]) if R and R[-1] else 0.0


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """BWT = 1/(T-1) * sum_{j<T} (R[T-1][j] - R[j][j]); negative means forgetting."""
    T = len(R)
    if T < 2 or len(R[0]) < T:
        return 0.0
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forgetting(R: Sequence[Sequence[float]]) -> float:
    """Average over j<T of the best past accuracy on j minus the final accuracy on j."""
    T = len(R)
    if T < 2 or len(R[0]) < T:
        return 0.0
    return sum(max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Sequence[Sequence[float]], b: Sequence[float]) -> float:
    """FWT = 1/(T-1) * sum_{j>=1} (R[j-1][j] - b[j]): what earlier experiences teach about later ones."""
    T = len(R)
    if T < 2 or len(b) < T or len(R[0]) < T:
        return 0.0
    return sum(R[j - 1][j] - b[j] for j in range(1, T)) / (T - 1)


def stream_accuracy(row: Sequence[float], sizes: Sequence[int]) -> float:
    """Accuracy over the whole test stream (experiences weighted by their test sizes)."""
    total = sum(sizes)
    return sum(a * n for a, n in zip(row, sizes)) / total if total else 0.0


def summary(R: list[list[float]], b: list[float], sizes: list[int]) -> dict:
    return {
        "final_accuracy": final_accuracy(R),
        "accuracy_matrix": R,
        "stream_accuracy": [stream_accuracy(row, sizes) for row in R],
        "forgetting": forgetting(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, b),
        "initial_accuracy": b,
    }
