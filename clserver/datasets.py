"""Uploaded datasets: parse NPZ or CSV safely, validate, store as a normalised NPZ."""
from __future__ import annotations

import csv
import io
import math
import uuid
import zipfile
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from claas_site.errors import Conflict, InvalidInput, PayloadTooLarge
from claas_site.quotas import quota_stored_bytes_check
from clserver.models import Dataset, Experiment
from clserver.selectors import dataset_get

MAX_CLASSES = 10_000


def _check_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim < 2:
        raise InvalidInput(f"x must have one row per sample (2 or more dimensions); it has shape {list(x.shape)}.")
    if y.ndim != 1:
        raise InvalidInput(f"y must be one label per sample (1 dimension); it has shape {list(y.shape)}.")
    if len(x) != len(y):
        raise InvalidInput(f"x has {len(x)} rows but y has {len(y)} labels; they must match.",
                           details={"x_rows": int(len(x)), "y_rows": int(len(y))})
    if len(y) < 2:
        raise InvalidInput("The dataset needs at least 2 samples.")
    if len(y) > settings.MAX_DATASET_ROWS:
        raise InvalidInput(f"The dataset has {len(y)} rows; at most {settings.MAX_DATASET_ROWS} are allowed.")
    x = x.reshape(len(x), -1)
    if x.shape[1] > settings.MAX_DATASET_COLUMNS:
        raise InvalidInput(f"The dataset has {x.shape[1]} features; at most {settings.MAX_DATASET_COLUMNS} are allowed.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise InvalidInput(f"x must be numeric; it has dtype {x.dtype}.")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise InvalidInput(f"x contains NaN or infinite values in {bad} rows.", details={"rows_with_nan_or_inf": bad})
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(np.mod(y, 1) == 0):
            raise InvalidInput("y must hold integer class labels; it has non-integer values.")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"y must hold integer class labels; it has dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise InvalidInput(f"Labels must lie in 0..{MAX_CLASSES - 1}; found {int(y.min())}..{int(y.max())}.")
    if len(np.unique(y)) < 2:
        raise InvalidInput("The dataset needs at least 2 classes.")
    return x, y


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npz_unpacked_check(raw: bytes) -> None:
    """Read only the headers of x and y and refuse what would unpack beyond the upload limit.

    A compressed NPZ of a few megabytes can unpack to many gigabytes; numpy would allocate
    them before any other check could run.
    """
    limit = settings.MAX_UPLOAD_BYTES
    total = 0
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = set(archive.namelist())
        for key in ("x", "y"):
            member = f"{key}.npy" if f"{key}.npy" in names else key
            if member not in names:
                continue  # reported by the caller with the arrays that are there
            with archive.open(member) as stream:
                try:
                    read_header = NPY_HEADER_READERS[np.lib.format.read_magic(stream)]
                    shape, _, dtype = read_header(stream)
                except (ValueError, KeyError, EOFError):
                    raise InvalidInput(f"Array '{key}' of the NPZ file is not a plain numpy array.")
            if dtype.hasobject:
                raise InvalidInput("The NPZ file holds pickled objects, which are refused; store plain numeric arrays.")
            total += math.prod(shape) * dtype.itemsize
    if total > limit:
        raise PayloadTooLarge(f"The NPZ arrays unpack to {total} bytes; the limit is {limit} bytes.",
                              details={"unpacked_bytes": total, "limit_bytes": limit})


def _parse_npz(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        _npz_unpacked_check(raw)
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise InvalidInput(f"The NPZ file must hold arrays 'x' and 'y'; '{missing[0]}' is missing.",
                                   details={"arrays": list(data.files)})
            return np.asarray(data["x"]), np.asarray(data["y"])
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise InvalidInput("The NPZ file holds pickled objects, which are refused; store plain numeric arrays.")
        raise InvalidInput("The file is not a readable NPZ archive.")
    except (zipfile.BadZipFile, OSError, EOFError):
        raise InvalidInput("The file is not a readable NPZ archive.")


def _parse_csv(raw: bytes, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput("The CSV file is not UTF-8 text.")
    try:
        return _parse_csv_text(text, label_column)
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise InvalidInput(f"The CSV file could not be read: {exc}.")


def _parse_csv_text(text: str, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    # newline="": a lone carriage return ends a line, as in files from old Mac tools.
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise InvalidInput("The CSV file is empty; it needs a header row.")
    header = [h.strip() for h in header]
    if len(header) > settings.MAX_DATASET_COLUMNS + 1:
        raise InvalidInput(f"The CSV file has {len(header)} columns; at most {settings.MAX_DATASET_COLUMNS + 1} are allowed.")
    if label_column not in header:
        raise InvalidInput(f"The CSV file has no column '{label_column}' (columns: {', '.join(header[:10])}).",
                           details={"label_column": label_column})
    label_at = header.index(label_column)
    rows: list[list[float]] = []
    labels: list[float] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(rows) >= settings.MAX_DATASET_ROWS:
            raise InvalidInput(f"The CSV file has more than {settings.MAX_DATASET_ROWS} rows.")
        if len(row) != len(header):
            raise InvalidInput(f"CSV line {line_no} has {len(row)} fields; the header has {len(header)}.")
        try:
            values = [float(cell) for cell in row]
        except ValueError:
            raise InvalidInput(f"CSV line {line_no} has a non-numeric value.", details={"line": line_no})
        labels.append(values.pop(label_at))
        rows.append(values)
    if not rows:
        raise InvalidInput("The CSV file has a header but no data rows.")
    return np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.float64)


def dataset_create(*, owner: Any, name: str, file: UploadedFile, label_column: str = "label") -> Dataset:
    if file.size is not None and file.size > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The file is {file.size} bytes; the limit is {settings.MAX_UPLOAD_BYTES} bytes.")
    if Dataset.objects.filter(owner=owner, name=name).exists():
        raise Conflict(f"A dataset named '{name}' exists already.")
    raw = file.read(settings.MAX_UPLOAD_BYTES + 1)
    if len(raw) > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes.")
    if raw[:4] == b"PK\x03\x04":
        x, y, fmt = *_parse_npz(raw), "npz"
    elif raw[:2] == b"\x80\x02" or raw[:1] == b"\x80":
        raise InvalidInput("Pickled files are refused; upload an NPZ with numeric arrays or a CSV.")
    else:
        x, y, fmt = *_parse_csv(raw, label_column), "csv"
    x, y = _check_arrays(x, y)
    quota_stored_bytes_check(owner=owner, adding=x.nbytes + y.nbytes)
    rel = f"files/datasets/{owner.pk}/{uuid.uuid4().hex}.npz"
    path = settings.DATA_DIR / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    try:
        with transaction.atomic():
            return Dataset.objects.create(
                owner=owner, name=name, file=rel, original_format=fmt, n_samples=len(y), n_features=x.shape[1],
                classes=sorted(int(c) for c in np.unique(y)), size_bytes=path.stat().st_size,
            )
    except IntegrityError:
        path.unlink(missing_ok=True)
        raise Conflict(f"A dataset named '{name}' exists already.")


def dataset_delete(*, owner: Any, name: str) -> None:
    dataset = dataset_get(owner=owner, name=name)
    users = [e.name for e in Experiment.objects.filter(owner=owner, options__benchmark__dataset=name)
             if e.options.get("benchmark", {}).get("name") == "dataset"]
    if users:
        raise Conflict(f"Dataset '{name}' is used by experiment '{users[0]}'; delete that experiment first.")
    path = settings.DATA_DIR / dataset.file
    dataset.delete()
    path.unlink(missing_ok=True)
