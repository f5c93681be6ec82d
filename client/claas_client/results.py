"""Typed views of what the server answers: an experiment's results and a deployment's predictions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np

if TYPE_CHECKING:  # pandas is optional: imported only by to_pandas
    import pandas


class Prediction(NamedTuple):
    """Classes predicted by a deployment's champion, and the version that predicted them."""

    classes: np.ndarray
    version: int


@dataclass(frozen=True)
class Results:
    """An experiment's results; `raw` is the server's JSON as it came."""

    raw: dict[str, Any] = field(repr=False)

    @property
    def exp_name(self) -> str:
        return str(self.raw.get("exp_name", ""))

    @property
    def status(self) -> str:
        return str(self.raw.get("status", ""))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.raw.get("metrics") or {})

    @property
    def accuracy_matrix(self) -> np.ndarray:
        """R[i, j]: accuracy on experience j's test data after training on experience i (NaN if unknown)."""
        rows = self.metrics.get("accuracy_matrix") or []
        if not rows:
            return np.zeros((0, 0))
        return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)

    @property
    def final_accuracy(self) -> Optional[float]:
        """Mean of the accuracy matrix's last row."""
        value = self.metrics.get("final_accuracy")
        return None if value is None else float(value)

    @property
    def forgetting(self) -> Optional[float]:
        value = self.metrics.get("forgetting")
        return None if value is None else float(value)

    @property
    def stream_accuracy(self) -> np.ndarray:
        """Accuracy on the whole test stream after each experience."""
        return np.array([np.nan if v is None else v for v in self.metrics.get("stream_accuracy") or []],
                        dtype=float)

    @property
    def experiences(self) -> list[dict[str, Any]]:
        """One dict per experience: classes, samples, training time, samples processed, accuracy, ..."""
        return list(self.raw.get("experiences") or [])

    @property
    def model(self) -> dict[str, Any]:
        """Where the final model is: `download_url`, `mlflow_uri`, ..."""
        return dict(self.raw.get("model") or {})

    def to_pandas(self) -> "pandas.DataFrame":
        """The per-experience table, one row per experience (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Results.to_pandas needs pandas: pip install pandas") from exc
        frame = pd.DataFrame(self.experiences)
        if "experience" in frame.columns:
            frame = frame.set_index("experience")
        else:
            frame.index.name = "experience"
        return frame

    def __repr__(self) -> str:
        return (f"Results(exp_name={self.exp_name!r}, status={self.status!r}, "
                f"final_accuracy={self.final_accuracy!r}, experiences={len(self.experiences)})")
