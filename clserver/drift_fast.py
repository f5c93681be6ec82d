"""Vectorised scoring for alibi-detect's KSDrift and MMDDrift (pytorch), bound onto fitted detectors.

alibi-detect 0.13 scores `KSDrift` with one scipy `ks_2samp` per feature and `MMDDrift` by
re-indexing the whole kernel matrix once per permutation. `accelerate` replaces those two
methods on one detector instance with array computations of the same tests: the detector stays
an alibi-detect object (its config, `predict`, saving and loading are untouched), only where its
scores come from changes.
"""
from __future__ import annotations

import itertools
import types
from typing import Any, Iterable

import numpy as np

from claas_site.lazy import lazy_import

torch = lazy_import("torch")

# The alibi-detect release whose KSDrift.feature_score and MMDDriftTorch.score these reproduce.
ALIBI_VERSION = "0.13."
# Permutations whose group masks go through one matrix product: 256 columns of N floats.
PERMUTATION_CHUNK = 256


def accelerate(detector: Any) -> Any:
    """Bind the vectorised scoring onto a KSDrift or a pytorch MMDDrift; return any other detector as is."""
    import alibi_detect
    from alibi_detect.cd import KSDrift, MMDDrift

    if not alibi_detect.__version__.startswith(ALIBI_VERSION):
        return detector  # the methods replaced here mirror this version's; another may score differently
    if type(detector) is KSDrift:
        detector.feature_score = types.MethodType(ks_feature_score, detector)
    elif type(detector) is MMDDrift:
        from alibi_detect.cd.pytorch.mmd import MMDDriftTorch

        inner = getattr(detector, "_detector", None)
        if type(inner) is MMDDriftTorch:
            inner.score = types.MethodType(mmd_score, inner)
    return detector


def is_accelerated(detector: Any) -> bool:
    """Whether `accelerate` has bound its scoring onto this detector."""
    bound = getattr(detector, "feature_score", None)
    if bound is not None and getattr(bound, "__func__", None) is ks_feature_score:
        return True
    inner = getattr(detector, "_detector", None)
    return getattr(getattr(inner, "score", None), "__func__", None) is mmd_score


# --- Kolmogorov-Smirnov ------------------------------------------------------------------------
def ks_statistics(x_ref: np.ndarray, x: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
    """The two-sample KS statistic of every column of `x_ref` against the same column of `x`.

    The same D as scipy's `ks_2samp`: both empirical CDFs (right-continuous) are compared at every
    observed value; within a run of equal values only the last position holds both CDFs' values.
    A column holding a NaN gets NaN, as scipy's default nan_policy gives.
    """
    alternative = _alternative(alternative)
    n1, n2 = len(x_ref), len(x)
    data = np.ascontiguousarray(np.concatenate([x_ref, x], axis=0).T)  # [features, n1 + n2]
    # Stable: on data with many ties (pixels, counts) it runs several times faster than quicksort.
    order = np.argsort(data, axis=1, kind="stable")
    values = np.take_along_axis(data, order, axis=1)
    from_ref = order < n1
    cdf_ref = np.cumsum(from_ref, axis=1, dtype=np.int64) / n1
    cdf_x = np.cumsum(~from_ref, axis=1, dtype=np.int64) / n2
    diffs = cdf_ref - cdf_x
    last = np.ones_like(from_ref)
    last[:, :-1] = values[:, 1:] != values[:, :-1]
    max_s = np.where(last, diffs, -np.inf).max(axis=1)
    min_s = np.clip(-np.where(last, diffs, np.inf).min(axis=1), 0, 1)
    d = min_s if alternative == "less" else max_s if alternative == "greater" else np.maximum(min_s, max_s)
    d[np.isnan(values[:, -1])] = np.nan  # NaNs sort last
    return d


def _alternative(alternative: str) -> str:
    named = {"t": "two-sided", "g": "greater", "l": "less"}.get(alternative.lower()[:1], alternative)
    if named not in ("two-sided", "less", "greater"):
        raise ValueError(f"Invalid value for alternative: {alternative}")
    return named


def ks_asymptotic_p_values(d: np.ndarray, n1: int, n2: int, alternative: str = "two-sided") -> np.ndarray:
    """p-values of KS statistics as scipy's `ks_2samp(..., method='asymp')` computes them.

    This is the method alibi-detect 0.13's KSDrift asks scipy for (`mode='asymp'`), not scipy's default
    'auto', which would take the exact distribution at these sizes. Two-sided: the one-sample distribution
    `kstwo` at the effective size round(n1 n2 / (n1 + n2)), the very function scipy calls; one-sided:
    Hodges' approximation, the same formula (numpy's vectorised exp may differ from scipy's scalar one in
    the last bit). Equal statistics are evaluated once.
    """
    from scipy.stats import kstwo

    alternative = _alternative(alternative)
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    unique, inverse = np.unique(d, return_inverse=True)
    if alternative == "two-sided":
        prob = kstwo.sf(unique, np.round(en))
    else:
        z = np.sqrt(en) * unique
        prob = np.exp(-2 * z**2 - 2 * z * (m + 2 * n) / np.sqrt(m * n * (m + n)) / 3.0)
    return np.clip(prob, 0, 1)[inverse.reshape(d.shape)]


def ks_feature_score(self: Any, x_ref: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KSDrift.feature_score for all features at once: alibi's p-values (scipy's 'asymp' method) and
    statistics, as float32 like alibi's."""
    x = x.reshape(x.shape[0], -1)
    x_ref = x_ref.reshape(x_ref.shape[0], -1)
    if x.shape[1] < self.n_features or x_ref.shape[1] < self.n_features:
        raise ValueError(f"The detector tests {self.n_features} features but the data has "
                         f"{min(x.shape[1], x_ref.shape[1])}.")
    x, x_ref = x[:, :self.n_features], x_ref[:, :self.n_features]
    dist = ks_statistics(x_ref, x, self.alternative)
    p_val = ks_asymptotic_p_values(dist, len(x_ref), len(x), self.alternative)
    return p_val.astype(np.float32), dist.astype(np.float32)


# --- Maximum Mean Discrepancy ------------------------------------------------------------------
def mmd2_permuted(kernel_mat: np.ndarray, m: int, permutations: Iterable[np.ndarray]) -> np.ndarray:
    """alibi's unbiased MMD^2 (`mmd2_from_kernel_matrix`, zero diagonal) for every permutation at once.

    Each permutation (of range(N), taken PERMUTATION_CHUNK at a time, so an iterator of them is never
    held whole) puts its first N - m indices in the reference group (mask a) and the last m in the test
    group (mask b = 1 - a). With K symmetric and its diagonal zero,
    MMD^2 = a'Ka / (n(n-1)) + b'Kb / (m(m-1)) - 2 b'Ka / (nm), where b'Ka = 1'Ka - a'Ka and
    b'Kb = b'K1 - b'Ka: one product of a chunk of masks with K, plus K's row sums, gives all three.
    The sums over N are taken in float64. numpy rather than torch: on a loaded machine torch's
    threads wait on each other in small reductions far longer than the arithmetic takes.
    """
    total = kernel_mat.shape[0]
    n = total - m
    c_xx, c_yy, c_xy = 1 / (n * (n - 1)), 1 / (m * (m - 1)), 2 / (n * m)
    row_sums = kernel_mat.sum(1, dtype=np.float64)  # K1
    out = []
    permutations = iter(permutations)
    while chunk := list(itertools.islice(permutations, PERMUTATION_CHUNK)):
        chunk = np.stack(chunk)
        in_ref = np.zeros((len(chunk), total), dtype=kernel_mat.dtype)
        np.put_along_axis(in_ref, chunk[:, :n], 1, axis=1)
        k_in_ref = in_ref @ kernel_mat  # [p, N]: (Ka)' for each permutation, K being symmetric
        aka = np.einsum("ij,ij->i", in_ref, k_in_ref, dtype=np.float64)
        bka = k_in_ref.sum(1, dtype=np.float64) - aka
        bkb = (row_sums.sum() - in_ref @ row_sums) - bka
        out.append(c_xx * aka + c_yy * bkb - c_xy * bka)
    return np.concatenate(out).astype(np.float32) if out else np.empty(0, dtype=np.float32)


def mmd_score(self: Any, x: Any) -> tuple[float, float, float]:
    """MMDDriftTorch.score with the permutations vectorised: the same kernel (and inferred sigma),
    preprocessing, observed MMD^2, permutations (drawn by torch.randperm in the same order), p-value
    and distance threshold as alibi's. The permuted MMD^2 are summed in float64 where alibi sums in
    float32, so they differ by rounding (under 1e-6); the p-value changes only where a permuted value
    lies that close to the observed one."""
    from alibi_detect.utils.pytorch.distance import mmd2_from_kernel_matrix

    x_ref, x = self.preprocess(x)
    x_ref = torch.from_numpy(x_ref).to(self.device)
    x = torch.from_numpy(x).to(self.device)
    m = x.shape[0]
    with torch.no_grad():
        kernel_mat = self.kernel_matrix(x_ref, x)
        kernel_mat.fill_diagonal_(0)  # in place: the same matrix as alibi's K - diag(K)
        mmd2 = mmd2_from_kernel_matrix(kernel_mat, m, permute=False, zero_diag=False).cpu()
        permutations = (torch.randperm(kernel_mat.shape[0]).numpy() for _ in range(self.n_permutations))
        permuted = torch.from_numpy(mmd2_permuted(kernel_mat.cpu().numpy(), m, permutations))
    p_val = (mmd2 <= permuted).float().mean()
    idx_threshold = int(self.p_val * len(permuted))
    distance_threshold = torch.sort(permuted, descending=True).values[idx_threshold]
    return p_val.numpy().item(), mmd2.numpy().item(), distance_threshold.numpy().item()
