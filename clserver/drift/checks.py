"""Reading a fitted detector's answer: one drift test summarised the same way for every detector."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class CheckResult:
    """One drift test, summarised the same way for every detector."""

    is_drift: bool
    p_val: float | None
    distance: float | None
    threshold: float | None
    details: dict[str, Any] = field(default_factory=dict)
    state_changed: bool = False


def as_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def check_batch(detector: Any, options: dict[str, Any], x: np.ndarray) -> CheckResult:
    data = detector.predict(x, return_p_val=True, return_distance=True)["data"]
    p_vals = np.atleast_1d(np.asarray(data["p_val"], dtype=np.float64))
    distances = np.atleast_1d(np.asarray(data["distance"], dtype=np.float64))
    threshold = data.get("threshold")
    if threshold is not None and np.ndim(threshold) > 0:
        # FDR with no feature below its bar reports every bar q i / n: the smallest p-value had to clear q / n.
        threshold = np.min(threshold)
    threshold = as_float(threshold)
    details: dict[str, Any] = {}
    if len(p_vals) > 1:
        # Feature-wise tests: the smallest p-value decides under Bonferroni; say how many features moved.
        details["n_features"] = int(len(p_vals))
        if threshold is not None:
            details["features_drifted"] = int((p_vals < threshold).sum())
        details["most_drifted_feature"] = int(np.argmin(p_vals))
    if "distance_threshold" in data:
        details["distance_threshold"] = as_float(np.asarray(data["distance_threshold"]).max())
    return CheckResult(is_drift=bool(data["is_drift"]), p_val=as_float(p_vals.min()), distance=as_float(distances.max()),
                       threshold=threshold, details=details)


def check_online(detector: Any, options: dict[str, Any], x: np.ndarray) -> CheckResult:
    detected_at: int | None = None
    stat = threshold = None
    for i, row in enumerate(x):
        data = detector.predict(row, return_test_stat=True)["data"]
        row_stat = np.asarray(data.get("test_stat"), dtype=np.float64).max() if data.get("test_stat") is not None else None
        row_thr = np.asarray(data.get("threshold"), dtype=np.float64).max() if data.get("threshold") is not None else None
        if detected_at is None:
            stat, threshold = row_stat, row_thr
        trim_online_state(detector)
        if data["is_drift"] and detected_at is None:
            detected_at = i
            # As alibi-detect advises: after a detection the test starts again from an empty window.
            detector.reset_state()
    return CheckResult(
        is_drift=detected_at is not None, p_val=None, distance=as_float(stat), threshold=as_float(threshold),
        details={"detected_at": detected_at, "time": int(detector.t), "ert": options["ert"],
                 "window_size": options["window_size"]},
        state_changed=True,
    )


def trim_online_state(detector: Any) -> None:
    """alibi-detect appends every sample's statistic and prediction to an online detector's state (and
    cvm_online every sample), copying all of them on each sample, and never reads them back: keep
    what the next sample needs, so the state (in memory and on disk) stays the size of the window."""
    inner = getattr(detector, "_detector", detector)
    inner.test_stats = inner.test_stats[:0]
    inner.drift_preds = inner.drift_preds[:0]
    if getattr(inner, "xs", None) is not None and hasattr(inner, "max_ws"):
        inner.xs = inner.xs[-inner.max_ws:]
