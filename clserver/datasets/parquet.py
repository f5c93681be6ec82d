"""Parquet uploads: sized and typed from the file's metadata, then read one numeric column at a time."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings

from claas_site.errors import InvalidInput, PayloadTooLarge

NOT_PARQUET = "The file is not a readable Parquet file."
PANDAS_INDEX_PREFIX = "__index_level_"  # a pandas index stored as a column is not a feature


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _check_schema(schema: pa.Schema, label_column: str) -> list[str]:
    """The feature columns, once every column's type is one a dataset can hold."""
    names = schema.names
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InvalidInput(f"The Parquet file has two columns named '{twice}'; name each column once.")
    if label_column not in names:
        raise InvalidInput(f"The Parquet file has no column '{label_column}' (columns: {', '.join(names[:10])}).",
                           details={"label_column": label_column})
    for field in schema:
        if pa.types.is_nested(field.type):
            raise InvalidInput(f"Column '{field.name}' of the Parquet file is nested ({field.type}); "
                               "store one number per cell.", details={"column": field.name})
        if not _is_number(field.type):
            raise InvalidInput(f"Column '{field.name}' of the Parquet file holds {field.type}, not numbers.",
                               details={"column": field.name})
    features = [n for n in names if n != label_column and not n.startswith(PANDAS_INDEX_PREFIX)]
    if not features:
        raise InvalidInput(f"The Parquet file needs at least one feature column besides '{label_column}'.")
    return features


def _column(file: pq.ParquetFile, name: str, rows: int) -> np.ndarray:
    column = file.read(columns=[name], use_threads=False).column(0)
    if len(column) != rows:
        raise InvalidInput(f"Column '{name}' of the Parquet file has {len(column)} rows but its metadata "
                           f"declares {rows}; the file is inconsistent.")
    return column.cast(pa.float64()).to_numpy()  # a missing value becomes NaN, refused like any other NaN


def parquet_read(raw: bytes, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows, columns, types and unpacked size come from the footer; no column is read until all pass."""
    try:
        file = pq.ParquetFile(pa.BufferReader(raw))
        rows, schema = file.metadata.num_rows, file.schema_arrow
        if len(schema.names) > settings.MAX_DATASET_COLUMNS + 1:
            raise InvalidInput(f"The Parquet file has {len(schema.names)} columns; at most "
                               f"{settings.MAX_DATASET_COLUMNS + 1} are allowed.")
        if rows > settings.MAX_DATASET_ROWS:
            raise InvalidInput(f"The Parquet file has {rows} rows; at most {settings.MAX_DATASET_ROWS} are allowed.")
        features = _check_schema(schema, label_column)
        if rows == 0:
            raise InvalidInput("The Parquet file has columns but no rows.")
        nbytes = rows * len(features) * 4
        if nbytes > settings.MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(f"The Parquet columns unpack to {nbytes} bytes of float32; the limit is "
                                  f"{settings.MAX_UPLOAD_BYTES} bytes.",
                                  details={"unpacked_bytes": nbytes, "limit_bytes": settings.MAX_UPLOAD_BYTES})
        x = np.empty((rows, len(features)), dtype=np.float32)
        for at, name in enumerate(features):
            x[:, at] = _column(file, name, rows)
        return x, _column(file, label_column, rows)
    except (pa.ArrowException, OSError, ValueError, TypeError, IndexError):
        raise InvalidInput(NOT_PARQUET)  # never the exception's text: it may quote the file's bytes
