"""Datasets: numpy arrays (sent as NPZ), pandas DataFrames (Parquet, or CSV without pyarrow), or files as they are."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from claas_client.transport import Transport, quoted


def is_dataframe(value: Any) -> bool:
    """A pandas DataFrame, told without importing pandas."""
    return type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas")


def npz_bytes(x: Any, y: Any) -> bytes:
    """`x` (rows of features) and `y` (one integer label per row) as an NPZ file in memory."""
    features = np.asarray(x)
    labels = np.asarray(y)
    if features.ndim < 2:
        raise ValueError(f"x must have one row per sample (at least 2 dimensions), not shape {features.shape}.")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"y must have one label per row of x ({features.shape[0]}), not shape {labels.shape}.")
    buffer = io.BytesIO()
    np.savez(buffer, x=features.reshape(features.shape[0], -1), y=labels)
    return buffer.getvalue()


def frame_bytes(frame: Any) -> tuple[bytes, str]:
    """A DataFrame as Parquet when pyarrow or fastparquet is there, as CSV otherwise; with its file name."""
    try:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue(), "data.parquet"
    except ImportError:
        return frame.to_csv(index=False).encode(), "data.csv"


class DatasetsApi:
    """Methods on `/api/datasets/`."""

    _http: Transport

    def upload_dataset(self, name: str, x: Any, y: Any = None, *, label: str = "label") -> dict[str, Any]:
        """Upload a dataset from numpy arrays `x` and `y`, or from a DataFrame `x` whose column `label` holds
        the classes (every other column is a feature). Returns the stored dataset's description."""
        if is_dataframe(x):
            if y is not None:
                raise ValueError("Give either a DataFrame with a label column, or arrays x and y, not both.")
            if label not in x.columns:
                raise ValueError(f"The DataFrame has no column '{label}' (pass label=<the class column>).")
            raw, filename = frame_bytes(x)
            return self._upload(name, raw, filename, {"label_column": label})
        if y is None:
            raise ValueError("upload_dataset needs labels y with arrays x (or a DataFrame with a label column).")
        return self._upload(name, npz_bytes(x, y), "data.npz", {})

    def upload_file(self, name: str, path: Union[str, Path], *, label_column: Optional[str] = None,
                    image_mode: Optional[str] = None, image_size: Optional[Sequence[int]] = None) -> dict[str, Any]:
        """Upload a file as it is: NPZ, CSV, Parquet or a zip of images in class folders.

        `label_column` for CSV and Parquet; `image_mode` ("L" or "RGB") and `image_size` ((height, width))
        for a zip of images.
        """
        fields: dict[str, str] = {}
        if label_column is not None:
            fields["label_column"] = label_column
        if image_mode is not None:
            fields["image_mode"] = image_mode
        if image_size is not None:
            fields["image_size"] = ",".join(str(int(v)) for v in image_size)
        path = Path(path)
        with open(path, "rb") as handle:
            return self._http.post("/api/datasets/", files={"file": (path.name, handle)},
                                   data={"name": name, **fields})

    def _upload(self, name: str, raw: bytes, filename: str, fields: dict[str, str]) -> dict[str, Any]:
        files = {"file": (filename, raw, "application/octet-stream")}
        return self._http.post("/api/datasets/", files=files, data={"name": name, **fields})

    def dataset(self, name: str) -> dict[str, Any]:
        return self._http.get(f"/api/datasets/{quoted(name)}")

    def datasets(self) -> list[dict[str, Any]]:
        return self._http.get("/api/datasets/")

    def delete_dataset(self, name: str) -> None:
        self._http.delete(f"/api/datasets/{quoted(name)}")
