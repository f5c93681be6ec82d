"""Memory of drift detection: a peak-bytes formula per detector, held to CLAAS_DRIFT_MEMORY_BYTES.

Every detector is fitted in the web process at deployment creation and tests each ingested batch
there. What cannot be computed in chunks (kernel matrices, bootstrap tables, the domain classifier)
is bounded here: each formula gives, from the reference rows N, the features F the test sees, the
raw features R, the batch rows m and the detector's options, the bytes the fitted detector keeps
(`resident`), and the peak on top of them while fitting (`fit`) and while testing a batch (`check`).
A deployment is created only when fitting and testing GUARANTEED_ROWS rows fit the budget; a batch
whose test would not fit is refused before it starts. The constants are measured peaks (tests/
clserver/test_drift_budget.py checks each formula against the peak RSS of real fits and checks).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from claas_site.errors import ApplicationError, InvalidInput, PayloadTooLarge

# Working memory of one chunk of what drift_fast computes in chunks (KS features, LSDD permutations,
# rows of a kernel matrix) and of one batch of a preprocess; at least one item is taken.
CHUNK_BYTES = 32 * 2**20
# Permutations of the permutation tests are drawn and scored this many at a time (clserver/drift/fast.py).
PERMUTATION_CHUNK = 256
# Bytes of drift_fast's KS working arrays per value of the [features, N + m] table (measured: 50.4).
KS_BYTES_PER_VALUE = 64
# alibi's Gaussian kernel keeps up to four float32 [a, b] matrices at once; drift_fast computes one a
# block of at least KERNEL_MIN_ROWS rows at a time.
KERNEL_BYTES_PER_PAIR = 16
KERNEL_MIN_ROWS = 64
# A deployment is created only when its detector can test a batch of this many rows within the budget.
GUARANTEED_ROWS = 1000
# The random projection suggested to a detector whose features take too much (its default dim).
PROJECTION_DIM = 32
# How long a fit or check waits for others to leave room in the budget before the request is answered 503.
WAIT_S = 120.0
# Inferring a kernel's bandwidth from the N reference rows (alibi's median heuristic) sorts their N^2
# pairwise distances (values, int64 indices and the sort's buffers), then keeps their kernel matrix:
# measured 23 bytes per pair.
SIGMA_BYTES_PER_PAIR = 28
# A category alibi keeps or counts per feature is a numpy scalar in a list (chi_square, tabular).
CATEGORY_BYTES = 48
# One check of a chi-squared feature: the union of categories, both count lists and their sets.
CATEGORY_CHECK_BYTES = 160


@dataclass(frozen=True)
class Sizes:
    """What a detector's memory grows with, apart from its options."""

    n_ref: int  # N: reference rows the detector keeps
    n_features: int  # F: features the test sees (after the preprocess)
    n_raw: int  # R: features of an input row
    rows: int  # m: rows of the batch tested
    encoder_bytes: int = 0  # parameters of the preprocess encoder
    batch_activation_bytes: int = 0  # preprocess activations of one of its batches


@dataclass(frozen=True)
class Cost:
    resident: int  # held by the fitted detector (and cached between checks)
    fit: int  # peak on top of `resident` while fitting
    check: int  # peak on top of `resident` while testing `rows` rows

    def peak(self) -> int:
        return self.resident + max(self.fit, self.check)


FORMULAS: dict[str, Callable[[Sizes, dict[str, Any]], Cost]] = {}
# The options to suggest lowering, most effective first (n_reference stands for N).
LOWER: dict[str, tuple[str, ...]] = {}


def formula(name: str, *, lower: tuple[str, ...]) -> Callable:
    def register(fn: Callable[[Sizes, dict[str, Any]], Cost]) -> Callable[[Sizes, dict[str, Any]], Cost]:
        FORMULAS[name] = fn
        LOWER[name] = lower
        return fn
    return register


def _kernel(a: int, b: int) -> int:
    return KERNEL_BYTES_PER_PAIR * a * b


def _kernel_blocks(b: int) -> int:
    """drift_fast.kernel_into: CHUNK_BYTES of rows at a time, but never fewer than KERNEL_MIN_ROWS."""
    per_row = KERNEL_BYTES_PER_PAIR * b
    return max(CHUNK_BYTES, 2 * KERNEL_MIN_ROWS * per_row) + per_row


def _sigma(n: int) -> int:
    return SIGMA_BYTES_PER_PAIR * n * n


# --- batch detectors ---------------------------------------------------------------------------
@formula("ks", lower=("n_reference",))
def ks_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, m = s.n_ref, s.n_features, s.rows
    # drift_fast tests a block of features at a time: CHUNK_BYTES, or one feature when that is more.
    block = max(CHUNK_BYTES, KS_BYTES_PER_VALUE * (n + m))
    return Cost(resident=4 * n * f, fit=8 * n * f, check=block + 8 * m * f)


@formula("mmd", lower=("n_reference",))
def mmd_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, m = s.n_ref, s.n_features, s.rows
    total = n + m
    # One (N+m)^2 kernel matrix, assembled from the kept N^2 block and new ones computed a block of
    # rows at a time; the permutations go PERMUTATION_CHUNK at a time (int64 indices, float32 masks
    # and products).
    check = 4 * total * total + _kernel_blocks(m) + 24 * PERMUTATION_CHUNK * total + 8 * m * f
    return Cost(resident=4 * n * f + 4 * n * n, fit=_sigma(n) + 8 * n * f, check=check)


@formula("lsdd", lower=("n_permutations", "n_reference"))
def lsdd_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, m, b = s.n_ref, s.n_features, s.rows, o["n_permutations"]
    c = max(n // 20, 1)  # alibi's kernel centres: a twentieth of the reference
    n_all = n - c + m
    # drift_fast gathers the permutations a chunk at a time; the regularisation over all of them
    # keeps [permutations, centres, 10 lambdas] floats (three such tensors at once).
    chunk = max(CHUNK_BYTES, n_all * (16 + 4 * c))
    check = 8 * m * f + _kernel(m, c) + 8 * n_all * c + chunk + 3 * 40 * b * c + 16 * b * c
    return Cost(resident=4 * n * f + 4 * (n - c) * c + 4 * c * f + 4 * c * c,
                fit=_sigma(n) + 12 * n * f, check=check)


@formula("chi_square", lower=("n_reference",))
def chi_square_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, m = s.n_ref, s.n_features, s.rows
    # Every distinct value of a feature is a category (at most N per feature, N + m with the batch).
    return Cost(resident=4 * n * f + CATEGORY_BYTES * n * f, fit=8 * n * f + CATEGORY_BYTES * n * f,
                check=8 * m * f + CATEGORY_CHECK_BYTES * (n + m) * f)


@formula("tabular", lower=("n_reference",))
def tabular_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, m = s.n_ref, s.n_features, s.rows
    n_cat = len(o.get("categorical_features") or [])
    # Numerical features go through scipy's ks_2samp one at a time.
    return Cost(resident=4 * n * f + CATEGORY_BYTES * n * n_cat, fit=8 * n * f + CATEGORY_BYTES * n * n_cat,
                check=8 * m * f + CATEGORY_CHECK_BYTES * (n + m) * n_cat + KS_BYTES_PER_VALUE * (n + m))


@formula("classifier", lower=("hidden_size", "n_reference"))
def classifier_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, m, h = s.n_ref, s.n_features, s.rows, o["hidden_size"]
    params = 4 * (f * h + 3 * h + 2)
    # Reference and batch joined, split into folds and indexed back (four copies); a fresh copy of the
    # classifier with its gradients and Adam's two moments.
    return Cost(resident=4 * n * f + params, fit=8 * n * f, check=16 * (n + m) * f + 4 * params)


# --- online detectors (each batch is tested one sample at a time) ------------------------------
def _windows(s: Sizes, o: dict[str, Any]) -> tuple[int, int]:
    w = o["window_size"]
    return w, 2 * w - 1


@formula("mmd_online", lower=("n_bootstraps", "n_reference", "window_size"))
def mmd_online_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, b = s.n_ref, s.n_features, o["n_bootstraps"]
    w, etw = _windows(s, o)
    rw = max(n - etw, 1)
    # Fitting draws every bootstrap's permutation of the reference at once (int64) and keeps its
    # column sums; each bootstrap indexes an [rw, N] block of the kernel matrix.
    fit = max(_sigma(n), b * (8 * n + 4 * etw + 1200) + 4 * rw * n + 4 * rw * rw)
    check = 4 * rw * f + _kernel(rw, 1) + 8 * w * f + 8 * rw * w + _kernel(w, w)
    return Cost(resident=4 * n * f + 4 * n * n + 4 * rw * rw + 4 * w * f + 4 * rw * w, fit=fit, check=check)


@formula("lsdd_online", lower=("n_bootstraps", "window_size", "n_reference"))
def lsdd_online_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, b = s.n_ref, s.n_features, o["n_bootstraps"]
    w, etw = _windows(s, o)
    c = 2 * w  # alibi's kernel centres: twice the window
    nkc = max(n - c, 1)
    rw = max(nkc - etw, 1)
    # Fitting gathers, for every bootstrap at once, its reference and window rows of the
    # kernel-centre matrix (a list and its stacked copy), then the regularisation over them.
    fit = max(_sigma(n), 8 * b * nkc + 10 * b * (rw + w) * c + 3 * 40 * b * c + 16 * b * c) + 12 * n * f
    check = _kernel(1, c) + 8 * w * f + 8 * w * c
    return Cost(resident=8 * n * f + 4 * c * f + 4 * nkc * c + 4 * c * c + 4 * w * f + 4 * w * c, fit=fit,
                check=check)


def cvm_batch_size(*, n_ref: int, window_size: int, n_bootstraps: int) -> int:
    """Bootstrap streams simulated at once (alibi's default is 64): each holds an (N + 2W)^2 boolean
    table, so larger references take fewer at a time. Any batch size gives the same thresholds."""
    side = n_ref + 2 * window_size - 1
    return max(1, min(64, n_bootstraps, CHUNK_BYTES // (side * side)))


@formula("cvm_online", lower=("n_bootstraps", "window_size", "n_reference"))
def cvm_online_cost(s: Sizes, o: dict[str, Any]) -> Cost:
    n, f, b = s.n_ref, s.n_features, o["n_bootstraps"]
    w, t_max = _windows(s, o)
    side = n + t_max
    batch = cvm_batch_size(n_ref=n, window_size=w, n_bootstraps=b)
    threads = _numba_threads()
    # Thresholds: the simulated statistics (three float64 [bootstraps, t_max] tables at once), one batch
    # of boolean rank tables, and each numba thread's cumulative sums. The reference's own CDF is
    # computed from an N x N x F boolean table.
    per_thread = 8 * (t_max + 1) * side + 24 * t_max * n
    fit = max(n * n * f + 16 * n * f, 24 * b * t_max + batch * (side * side + 8 * side) + threads * per_thread)
    # The window state: [N, W, F] and [W, N, F] booleans and a [W, W, F] int64 table, each copied on
    # every sample, and float64 CDFs of the reference.
    state = 2 * n * w * f + 8 * w * w * f + 4 * w * f
    check = 2 * state + 32 * n * f + 32 * w * f
    return Cost(resident=4 * n * f + 8 * n * f + state, fit=fit, check=check)


def _numba_threads() -> int:
    try:
        import numba

        return int(numba.config.NUMBA_NUM_THREADS)
    except ImportError:  # pragma: no cover - alibi-detect depends on numba
        return 1


# --- the budget --------------------------------------------------------------------------------
def budget_bytes() -> int:
    from django.conf import settings

    return int(settings.DRIFT_MEMORY_BYTES)


def cost(name: str, sizes: Sizes, options: dict[str, Any]) -> Cost:
    """The detector's formula plus its preprocess: the encoder's weights stay with the detector; while
    preprocessing, one batch's activations and the rows' outputs (a list of batches and their join)."""
    base = FORMULAS[name](sizes, options)
    if not options.get("preprocess"):
        return replace(base, check=base.check + 4 * sizes.rows * sizes.n_raw)
    encode = sizes.batch_activation_bytes
    return Cost(resident=base.resident + sizes.encoder_bytes,
                fit=base.fit + encode + 8 * sizes.n_ref * sizes.n_features + 4 * sizes.n_ref * sizes.n_raw,
                check=base.check + encode + 8 * sizes.rows * sizes.n_features + 4 * sizes.rows * sizes.n_raw)


def human(n: float) -> str:
    """512 MiB, 1.5 GiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            break
        n /= 1024
    return f"{f'{n:.1f}'.rstrip('0').rstrip('.')} {unit}"


def _with(sizes: Sizes, options: dict[str, Any], key: str, value: int) -> tuple[Sizes, dict[str, Any]]:
    if key == "n_reference":
        return replace(sizes, n_ref=value), options
    return sizes, {**options, key: value}


def _largest(name: str, sizes: Sizes, options: dict[str, Any], key: str, low: int, limit: int,
             peak: Callable[[Cost], int]) -> int | None:
    """The largest value of `key` in [low, current] whose peak fits `limit`, or None."""
    high = sizes.n_ref if key == "n_reference" else int(options[key])
    fits = lambda v: peak(cost(name, *_with(sizes, options, key, v))) <= limit  # noqa: E731
    if high < low or not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def check_creation(*, name: str, options: dict[str, Any], sizes: Sizes, minimums: dict[str, int]) -> int:
    """Refuse a detector whose fitting, or its test of GUARANTEED_ROWS rows, would exceed the budget;
    return the bytes fitting it takes."""
    limit = budget_bytes()
    sizes = replace(sizes, rows=GUARANTEED_ROWS)
    estimate = cost(name, sizes, options)
    need = estimate.peak()
    if need <= limit:
        return estimate.resident + estimate.fit
    details: dict[str, Any] = {"estimated_bytes": need, "budget_bytes": limit}
    advice = []
    for key in LOWER[name]:
        best = _largest(name, sizes, options, key, minimums.get(key, 1), limit, Cost.peak)
        if best is not None:
            details[f"detector.{key}"] = best
            advice.append(f"lower detector.{key} to at most {best}")
    projected = replace(sizes, n_features=PROJECTION_DIM, encoder_bytes=4 * PROJECTION_DIM * sizes.n_raw)
    if (options.get("preprocess") is None and sizes.n_features > PROJECTION_DIM
            and cost(name, projected, {**options, "preprocess": {"name": "random_projection"}}).peak() <= limit):
        advice.append(f"reduce the features with detector.preprocess random_projection (dim {PROJECTION_DIM})")
    raise InvalidInput(
        f"The {name} detector would need about {human(need)} to fit on {sizes.n_ref} reference rows of "
        f"{sizes.n_features} features and test a batch of {GUARANTEED_ROWS} rows, over the server's drift memory "
        f"budget of {human(limit)}; {' or '.join(advice[:2]) or 'lower its parameters'}.", details=details)


def check_batch(*, name: str, options: dict[str, Any], sizes: Sizes) -> int:
    """Refuse a batch whose test would exceed the budget, saying how many rows would fit; return the
    bytes the test takes on top of the detector's own."""
    limit = budget_bytes()
    check_peak = lambda c: c.resident + c.check  # noqa: E731
    estimate = cost(name, sizes, options)
    need = check_peak(estimate)
    if need <= limit:
        return estimate.check
    details = {"estimated_bytes": need, "budget_bytes": limit, "rows": sizes.rows}
    low, high = 1, sizes.rows - 1
    if high < 1 or check_peak(cost(name, replace(sizes, rows=1), options)) > limit:
        raise InvalidInput(
            f"This deployment's {name} detector needs about {human(need)} to test any batch, over the server's "
            f"drift memory budget of {human(limit)}; create the deployment again with a smaller detector.",
            details=details)
    while low < high:
        mid = (low + high + 1) // 2
        fits = check_peak(cost(name, replace(sizes, rows=mid), options)) <= limit
        low, high = (mid, high) if fits else (low, mid - 1)
    raise PayloadTooLarge(
        f"This deployment's {name} detector can test at most {low} rows per ingest within the server's drift memory "
        f"budget of {human(limit)}; send these {sizes.rows} rows in smaller batches.",
        details={**details, "max_rows": low})


# --- fits and checks at once -------------------------------------------------------------------
_room = threading.Condition()
_reserved = 0


@contextlib.contextmanager
def reserved(nbytes: int) -> Iterator[None]:
    """Hold `nbytes` of the process's drift budget while a fit or check runs: small ones run side by
    side, a large one waits until the others have left room, so all of them at once stay within it."""
    global _reserved
    limit = budget_bytes()
    nbytes = min(nbytes, limit)
    with _room:
        if not _room.wait_for(lambda: _reserved + nbytes <= limit, timeout=WAIT_S):
            raise ApplicationError("The server is testing other batches for drift and has no memory left for "
                                   "this one; try again in a minute.", status_code=503)
        _reserved += nbytes
    try:
        yield
    finally:
        with _room:
            _reserved -= nbytes
            _room.notify_all()
