"""Vectorised, memory-bounded scoring for alibi-detect's KSDrift, MMDDrift and LSDDDrift (pytorch).

alibi-detect 0.13 scores `KSDrift` with one scipy `ks_2samp` per feature, `MMDDrift` by
re-indexing the whole kernel matrix once per permutation, and `LSDDDrift` by gathering every
permutation's rows of the kernel-centre matrix at once (n_permutations x rows x centres floats:
gigabytes). `accelerate` replaces those methods on one detector instance with array computations
of the same tests, taken in chunks whose size does not depend on the number of features or
permutations: the detector stays an alibi-detect object (its config, `predict`, saving and
loading are untouched), only where its scores come from changes. CLaaS's own detectors
(clserver/drift/own.py) score with the same functions; only `accelerate` imports alibi-detect, and
only for a detector that is alibi-detect's.
"""
from __future__ import annotations

import itertools
import types
from typing import Any, Iterable

import numpy as np

from claas_site.lazy import lazy_import
from clserver.drift import budget as drift_budget

torch = lazy_import("torch")

# The alibi-detect release whose KSDrift.feature_score and MMDDriftTorch.score these reproduce.
ALIBI_VERSION = "0.13."
PERMUTATION_CHUNK = drift_budget.PERMUTATION_CHUNK


def accelerate(detector: Any) -> Any:
    """Bind the vectorised scoring onto a KSDrift or a pytorch MMDDrift or LSDDDrift; return any other as is
    (CLaaS's own detectors, clserver/drift/own.py, score this way already, and need no alibi-detect)."""
    if not type(detector).__module__.startswith("alibi_detect."):
        return detector
    import alibi_detect
    from alibi_detect.cd import KSDrift, LSDDDrift, MMDDrift

    if not alibi_detect.__version__.startswith(ALIBI_VERSION):
        return detector  # the methods replaced here mirror this version's; another may score differently
    inner = getattr(detector, "_detector", None)
    if type(detector) is KSDrift:
        detector.feature_score = types.MethodType(ks_feature_score, detector)
    elif type(detector) is MMDDrift:
        from alibi_detect.cd.pytorch.mmd import MMDDriftTorch

        if type(inner) is MMDDriftTorch:
            inner.score = types.MethodType(mmd_score, inner)
    elif type(detector) is LSDDDrift:
        from alibi_detect.cd.pytorch.lsdd import LSDDDriftTorch

        # Ours keeps alibi's preprocessing only when the reference was preprocessed at fitting.
        if type(inner) is LSDDDriftTorch and (inner.preprocess_at_init or inner.preprocess_fn is None
                                              or inner.x_ref_preprocessed):
            inner.score = types.MethodType(lsdd_score, inner)
    return detector


def is_accelerated(detector: Any) -> bool:
    """Whether `accelerate` has bound its scoring onto this detector."""
    bound = getattr(detector, "feature_score", None)
    if bound is not None and getattr(bound, "__func__", None) is ks_feature_score:
        return True
    inner = getattr(detector, "_detector", None)
    return getattr(getattr(inner, "score", None), "__func__", None) in (mmd_score, lsdd_score)


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
    # Features are independent: a block of them at a time bounds the working arrays.
    step = max(1, drift_budget.CHUNK_BYTES // (drift_budget.KS_BYTES_PER_VALUE * (len(x_ref) + len(x))))
    dist = np.concatenate([ks_statistics(x_ref[:, f:f + step], x[:, f:f + step], self.alternative)
                           for f in range(0, self.n_features, step)])
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


def kernel_into(kernel: Any, a: Any, b: Any, out: Any) -> None:
    """kernel(a, b) written into `out`, a block of a's rows at a time when the whole would need more than
    CHUNK_BYTES of working memory (alibi's Gaussian kernel keeps four [a, b] float32 matrices at once).

    Blocks hold at least KERNEL_MIN_ROWS rows: MKL may round a product of a few rows differently from
    the same rows of a larger one, which blocks of 64 rows or more did not in tests/clserver/
    test_drift_fast.py. A kernel small enough for one block is computed exactly as alibi computes it.
    """
    per_row = drift_budget.KERNEL_BYTES_PER_PAIR * len(b)
    blocks = min(-(-len(a) * per_row // drift_budget.CHUNK_BYTES), len(a) // drift_budget.KERNEL_MIN_ROWS)
    if blocks <= 1:
        out.copy_(kernel(a, b))
        return
    bounds = np.linspace(0, len(a), blocks + 1).round().astype(int)
    for start, stop in itertools.pairwise(bounds):
        out[start:stop] = kernel(a[start:stop], b)


def mmd_kernel_matrix(self: Any, x_ref: Any, x: Any) -> Any:
    """MMDDriftTorch.kernel_matrix written into one preallocated (N+m)^2 matrix: the same blocks as
    alibi's torch.cat of [[k_xx, k_xy], [k_xy', k_yy]] without the concatenations' copies, and the
    new blocks computed a block of rows at a time (`kernel_into`). A detector that would infer its
    bandwidth from this batch, or recompute k_xx, takes alibi's own method."""
    if self.infer_sigma or self.k_xx is None or self.update_x_ref is not None:
        return self.kernel_matrix(x_ref, x)
    n, total = x_ref.shape[0], x_ref.shape[0] + x.shape[0]
    kernel_mat = torch.empty((total, total), dtype=self.k_xx.dtype, device=self.k_xx.device)
    kernel_into(self.kernel, x_ref, x, kernel_mat[:n, n:])
    kernel_mat[:n, :n] = self.k_xx
    kernel_mat[n:, :n] = kernel_mat[:n, n:].T
    kernel_into(self.kernel, x, x, kernel_mat[n:, n:])
    return kernel_mat


def mmd2_observed(kernel_mat: Any, m: int) -> Any:
    """The unbiased MMD^2 of the last m rows against the others, from a kernel matrix whose diagonal is
    zero: alibi's `mmd2_from_kernel_matrix(permute=False, zero_diag=False)`, operation for operation."""
    n = kernel_mat.shape[0] - m
    k_xx, k_yy, k_xy = kernel_mat[:-m, :-m], kernel_mat[-m:, -m:], kernel_mat[-m:, :-m]
    c_xx, c_yy = 1 / (n * (n - 1)), 1 / (m * (m - 1))
    return c_xx * k_xx.sum() + c_yy * k_yy.sum() - 2. * k_xy.mean()


def mmd_score(self: Any, x: Any) -> tuple[float, float, float]:
    """MMDDriftTorch.score with the permutations vectorised: the same kernel (and inferred sigma),
    preprocessing, observed MMD^2, permutations (drawn by torch.randperm in the same order), p-value
    and distance threshold as alibi's. The permuted MMD^2 are summed in float64 where alibi sums in
    float32, so they differ by rounding (under 1e-6); the p-value changes only where a permuted value
    lies that close to the observed one."""
    x_ref, x = self.preprocess(x)
    x_ref = torch.from_numpy(x_ref).to(self.device)
    x = torch.from_numpy(x).to(self.device)
    m = x.shape[0]
    with torch.no_grad():
        kernel_mat = mmd_kernel_matrix(self, x_ref, x)
        kernel_mat.fill_diagonal_(0)  # in place: the same matrix as alibi's K - diag(K)
        mmd2 = mmd2_observed(kernel_mat, m).cpu()
        permutations = (torch.randperm(kernel_mat.shape[0]).numpy() for _ in range(self.n_permutations))
        permuted = torch.from_numpy(mmd2_permuted(kernel_mat.cpu().numpy(), m, permutations))
    p_val = (mmd2 <= permuted).float().mean()
    idx_threshold = int(self.p_val * len(permuted))
    distance_threshold = torch.sort(permuted, descending=True).values[idx_threshold]
    return p_val.numpy().item(), mmd2.numpy().item(), distance_threshold.numpy().item()


# --- Least-Squares Density Difference ----------------------------------------------------------
def lsdd_h_permuted(k_all_c: Any, n_x: int, n_permutations: int) -> Any:
    """alibi's `permed_lsdds` h vectors (Eqn 7: each permutation's mean kernel-centre similarity of its
    first n_x rows minus that of the rest), gathered a chunk of permutations at a time.

    The permutations are drawn by torch.randperm in alibi's order (nothing else draws in between) and
    each chunk is gathered and averaged exactly as alibi gathers all of them, so the result is the
    same to the last bit whatever the chunk size; only [n_permutations, centres] floats stay.
    """
    n_all, centres = k_all_c.shape
    per_permutation = n_all * (8 + centres * k_all_c.element_size())
    step = max(1, drift_budget.CHUNK_BYTES // per_permutation)
    chunks = []
    for start in range(0, n_permutations, step):
        perms = torch.stack([torch.randperm(n_all) for _ in range(min(step, n_permutations - start))])
        chunks.append(k_all_c[perms[:, :n_x]].mean(1) - k_all_c[perms[:, n_x:]].mean(1))
    return torch.cat(chunks)


def lsdd_from_h(h_perms: Any, k_all_c: Any, n_x: int, H: Any, lam_rd_max: float) -> tuple[Any, Any]:
    """The rest of alibi's `permed_lsdds(..., return_unpermed=True)` from the h vectors, line for line:
    the regularisation chosen over all permutations, then each permutation's LSDD and the observed one.

    Kept whole rather than chunked: MKL's products of a slice of h_perms may round differently from
    those of all of it, and this part holds [n_permutations, centres, 10] floats, which the memory
    formula of the lsdd detector counts.
    """
    candidate_lambdas = [1 / (4**i) for i in range(10)]
    H_plus_lams = torch.stack([H + torch.eye(H.shape[0], device=H.device) * lam for lam in candidate_lambdas], 0)
    H_plus_lam_invs = torch.inverse(H_plus_lams).permute(1, 2, 0)
    omegas = torch.einsum("jkl,bk->bjl", H_plus_lam_invs, h_perms)
    h_omegas = torch.einsum("bj,bjl->bl", h_perms, omegas)
    omega_H_omegas = torch.einsum("bkl,bkl->bl", torch.einsum("bjl,jk->bkl", omegas, H), omegas)
    del omegas
    rds = (1 - (omega_H_omegas / h_omegas)).mean(0)
    less_than_rd_inds = (rds < lam_rd_max).nonzero()
    if len(less_than_rd_inds) == 0:
        repeats = k_all_c.shape[0] - torch.unique(k_all_c, dim=0).shape[0]
        if repeats > 0:
            raise ValueError("Too many repeat instances for LSDD-based detection. Try using MMD-based detection "
                             "instead")
        raise ValueError("Unknown error. Try using MMD-based detection instead")
    H_plus_lam_inv = H_plus_lam_invs[:, :, int(less_than_rd_inds[0].item())]
    H_lam_inv = 2 * H_plus_lam_inv - (H_plus_lam_inv.transpose(0, 1) @ H @ H_plus_lam_inv)
    lsdd_perms = (h_perms * (H_lam_inv @ h_perms.transpose(0, 1)).transpose(0, 1)).sum(-1)
    h = k_all_c[:n_x].mean(0) - k_all_c[n_x:].mean(0)
    lsdd_unpermed = (h[None, :] * (H_lam_inv @ h[:, None]).transpose(0, 1)).sum()
    return lsdd_perms, lsdd_unpermed


def lsdd_score(self: Any, x: Any) -> tuple[float, float, float]:
    """LSDDDriftTorch.score with the permutations gathered a chunk at a time (`lsdd_h_permuted`): the
    same normalisation, kernel centres, permutations, p-value and threshold as alibi's, to the last bit."""
    x_ref, x = self.preprocess(x)
    x = self._normalize(torch.from_numpy(x).to(self.device))
    with torch.no_grad():
        k_yc = self.kernel(x, self.kernel_centers)
        k_all_c = torch.cat([self.k_xc, k_yc], 0)
        del k_yc
        n_x = x_ref.shape[0] - self.n_kernel_centers
        h_perms = lsdd_h_permuted(k_all_c, n_x, self.n_permutations)
        lsdd_permuted, lsdd = lsdd_from_h(h_perms, k_all_c, n_x, self.H, self.lambda_rd_max)
    p_val = (lsdd <= lsdd_permuted).float().mean()
    idx_threshold = int(self.p_val * len(lsdd_permuted))
    distance_threshold = torch.sort(lsdd_permuted, descending=True).values[idx_threshold]
    return p_val.cpu().item(), lsdd.cpu().numpy().item(), distance_threshold.cpu().numpy().item()
