"""Uploaded datasets: detect the format, parse it safely, validate, store as a normalised NPZ."""
from __future__ import annotations

import codecs
import csv
import io
import math
import uuid
import zipfile
import zlib
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from claas_site.errors import Conflict, InvalidInput, PayloadTooLarge
from claas_site.quotas import quota_count_check, quota_stored_bytes_check
from clserver.models import Dataset, Experiment
from clserver.datasets.images import image_folder_read, zip_is_image_folder
from clserver.datasets.limits import MAX_CLASSES
from clserver.datasets.parquet import parquet_read
from clserver.datasets.selectors import dataset_get


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
    if math.prod(x.shape[1:]) == 0:
        raise InvalidInput(f"x has no features (shape {list(x.shape)}); each sample needs at least one value.")
    x = x.reshape(len(x), -1)
    if x.shape[1] > settings.MAX_DATASET_COLUMNS:
        raise InvalidInput(f"The dataset has {x.shape[1]} features; at most {settings.MAX_DATASET_COLUMNS} are allowed.")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise InvalidInput(f"x must be numeric; it has dtype {x.dtype}.")
    x = x.astype(np.float32, copy=False)  # a CSV's values are float32 already: no second copy
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


NPZ_KEYS = ("x", "y")
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
ZIP_DIRECTORY_LIMIT = 64 * 1024  # two members take ~150 bytes; ZipFile holds ~6x the directory in objects
READ_CHUNK = 1024 * 1024
NOT_NPZ = "The file is not a readable NPZ archive."
PICKLED = "The NPZ file holds pickled objects, which are refused; store plain numeric arrays."


@dataclass(frozen=True)
class _NpyMember:
    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    data_offset: int  # bytes of magic and header before the array data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _npz_member_name(names: list[str], key: str) -> str | None:
    """The member numpy's NpzFile reads for `key`: the exact name first, then `key.npy` (numpy 1.26 and 2.x)."""
    if key in names:
        return key
    return f"{key}.npy" if f"{key}.npy" in names else None


def _npz_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The members x and y resolve to, refusing archives whose other members could be read instead."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise InvalidInput("The NPZ file holds two members with the same name; store each array once.")
    resolved = {key: _npz_member_name(names, key) for key in NPZ_KEYS}
    missing = [key for key, name in resolved.items() if name is None]
    if missing:
        raise InvalidInput(f"The NPZ file must hold arrays 'x' and 'y'; '{missing[0]}' is missing.",
                           details={"arrays": [n[:-4] if n.endswith(".npy") else n for n in names][:20]})
    unused = [name for name in names if name not in resolved.values()]
    if unused:
        raise InvalidInput(f"The NPZ file holds members besides x and y ({', '.join(unused[:5])[:200]}); "
                           "store only the arrays x and y.", details={"unused_members": len(unused)})
    return {key: archive.getinfo(name) for key, name in resolved.items()}


def _npy_header(archive: zipfile.ZipFile, key: str, info: zipfile.ZipInfo) -> _NpyMember:
    """Read only the magic and header of one member: a few kilobytes at most, whatever it declares."""
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InvalidInput(f"Array '{key}' of the NPZ file is encrypted or compressed with a method other than "
                           "deflate; save it with numpy.savez or numpy.savez_compressed.")
    with archive.open(info) as stream:
        try:
            read_header = NPY_HEADER_READERS[np.lib.format.read_magic(stream)]
            shape, fortran, dtype = read_header(stream)
        except (ValueError, KeyError, EOFError, SyntaxError):
            raise InvalidInput(f"Array '{key}' of the NPZ file is not a plain numpy array.")
        data_offset = stream.tell()
    if dtype.hasobject:
        raise InvalidInput(PICKLED)
    if dtype.itemsize == 0 or any(n < 0 for n in shape):
        raise InvalidInput(f"Array '{key}' of the NPZ file is not a plain numpy array.")
    return _NpyMember(key, info, tuple(shape), bool(fortran), dtype, data_offset)


def _npy_read(archive: zipfile.ZipFile, member: _NpyMember) -> np.ndarray:
    """Inflate exactly the bytes the header declares into one buffer, in chunks; more or fewer is refused."""
    nbytes = member.nbytes
    buffer = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buffer)
    got = 0
    with archive.open(member.info) as stream:
        stream.read(member.data_offset)
        while got < nbytes:
            chunk = stream.read(min(READ_CHUNK, nbytes - got))
            if not chunk:
                raise InvalidInput(f"Array '{member.key}' of the NPZ file is shorter than its header says.")
            view[got:got + len(chunk)] = chunk
            got += len(chunk)
        if stream.read(1):  # never more than one byte past the header's size; at the end zipfile checks the CRC
            raise InvalidInput(f"Array '{member.key}' of the NPZ file is longer than its header says.")
    array = buffer.view(member.dtype)
    return array.reshape(member.shape[::-1]).T if member.fortran else array.reshape(member.shape)


def _parse_npz(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Read x and y ourselves, every size bounded before anything is inflated.

    numpy.load trusts the archive: a compressed member of a few megabytes can unpack to gigabytes,
    a member that is not an array is inflated whole, and the member it reads for `x` can be another
    than the one a check looked at. Here the zip directory, then each member's .npy header, are
    checked against the upload limit and against each other before one byte of data is inflated,
    and the inflating stops at the size the header declares.
    """
    limit = settings.MAX_UPLOAD_BYTES
    try:
        end = zipfile._EndRecData(io.BytesIO(raw))  # what ZipFile itself reads the directory's size from
        if end is None:
            raise InvalidInput(NOT_NPZ)
        if end[zipfile._ECD_SIZE] > ZIP_DIRECTORY_LIMIT:
            raise InvalidInput("The NPZ file's directory is too large for an archive of the arrays x and y.",
                               details={"directory_bytes": end[zipfile._ECD_SIZE], "limit_bytes": ZIP_DIRECTORY_LIMIT})
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            members = [_npy_header(archive, key, info) for key, info in _npz_members(archive).items()]
            # What the arrays take once converted (x to float32, y to int64), not only as stored: a
            # compressed uint8 or bool x would otherwise grow 4x past the limit after it was checked.
            total = sum(math.prod(m.shape) * max(m.dtype.itemsize, 4 if m.key == "x" else 8) for m in members)
            if total > limit:
                raise PayloadTooLarge(f"The NPZ arrays unpack to {total} bytes; the limit is {limit} bytes.",
                                      details={"unpacked_bytes": total, "limit_bytes": limit})
            for m in members:
                if m.info.file_size != m.data_offset + m.nbytes:
                    raise InvalidInput(
                        f"Array '{m.key}' of the NPZ file has {m.info.file_size} bytes in the archive but its header "
                        f"describes {m.data_offset + m.nbytes}; the archive is inconsistent.",
                        details={"array": m.key})
            x, y = (_npy_read(archive, m) for m in members)
            return x, y
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError):
        # Never the exception's text: it may name the member's bytes or a path.
        raise InvalidInput(NOT_NPZ)


def _utf8_check(raw: bytes) -> None:
    """Refuse text that is not UTF-8 before parsing, without holding a decoded copy of the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(raw)
    try:
        for start in range(0, len(raw), READ_CHUNK):
            decoder.decode(view[start:start + READ_CHUNK], final=start + READ_CHUNK >= len(raw))
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidInput("The CSV file is not UTF-8 text.")


def _parse_csv(raw: bytes, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    _utf8_check(raw)
    # Decoded a chunk at a time; newline="": a lone carriage return ends a line, as in files from old Mac tools.
    text = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8-sig", newline="")
    try:
        return _parse_csv_text(text, label_column)
    except csv.Error as exc:  # e.g. a field over the csv module's size limit
        raise InvalidInput(f"The CSV file could not be read: {exc}.")


def _parse_csv_text(text: io.TextIOBase, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Values go straight into a float32 array (4 bytes each), never into lists of Python floats (~32 bytes each)."""
    reader = csv.reader(text)
    header = next(reader, None)
    if not header:
        raise InvalidInput("The CSV file is empty; it needs a header row.")
    header = [h.strip() for h in header]
    if len(header) > settings.MAX_DATASET_COLUMNS + 1:
        raise InvalidInput(f"The CSV file has {len(header)} columns; at most {settings.MAX_DATASET_COLUMNS + 1} are allowed.")
    if label_column not in header:
        raise InvalidInput(f"The CSV file has no column '{label_column}' (columns: {', '.join(header[:10])}).",
                           details={"label_column": label_column})
    if len(header) < 2:
        raise InvalidInput(f"The CSV file needs at least one feature column besides '{label_column}'.")
    label_at = header.index(label_column)
    values = array("f")
    labels = array("d")  # float64, as before: 1.00000001 is not a class label
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(labels) >= settings.MAX_DATASET_ROWS:
            raise InvalidInput(f"The CSV file has more than {settings.MAX_DATASET_ROWS} rows.")
        if len(row) != len(header):
            raise InvalidInput(f"CSV line {line_no} has {len(row)} fields; the header has {len(header)}.")
        try:
            label = float(row.pop(label_at))
            values.extend(map(float, row))  # each value rounded once from float64 to float32, as astype does
        except ValueError:
            raise InvalidInput(f"CSV line {line_no} has a non-numeric value.", details={"line": line_no})
        labels.append(label)
    if not labels:
        raise InvalidInput("The CSV file has a header but no data rows.")
    x = np.frombuffer(values, dtype=np.float32).reshape(len(labels), len(header) - 1)
    return x, np.frombuffer(labels, dtype=np.float64)


def _parse(raw: bytes, label_column: str, image_mode: str | None,
           image_size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, str, dict[str, np.ndarray]]:
    """The one place that tells formats apart: x, y, the format's name and what the NPZ keeps beside x and y."""
    is_images = raw[:4] == b"PK\x03\x04" and zip_is_image_folder(raw)
    if (image_mode or image_size) and not is_images:
        raise InvalidInput("image_mode and image_size apply only to a zip of images in class folders.")
    if is_images:
        images = image_folder_read(raw, mode=image_mode, size=image_size)
        # The row keeps class indices and flat features; the file keeps the folder names and [C, H, W].
        extra = {"class_names": np.array(images.class_names), "input_shape": np.array(images.input_shape)}
        return images.x, images.y, "images", extra
    if raw[:4] == b"PK\x03\x04":
        return *_parse_npz(raw), "npz", {}
    if raw[:4] == b"PAR1":
        return *parquet_read(raw, label_column), "parquet", {}
    if raw[:2] == b"\x80\x02" or raw[:1] == b"\x80":
        raise InvalidInput("Pickled files are refused; upload an NPZ with numeric arrays, a CSV, a Parquet file "
                           "or a zip of images.")
    return *_parse_csv(raw, label_column), "csv", {}


def dataset_create(*, owner: Any, name: str, file: UploadedFile, label_column: str = "label",
                   image_mode: str | None = None, image_size: tuple[int, int] | None = None) -> Dataset:
    if file.size is not None and file.size > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The file is {file.size} bytes; the limit is {settings.MAX_UPLOAD_BYTES} bytes.")
    if Dataset.objects.filter(owner=owner, name=name).exists():
        raise Conflict(f"A dataset named '{name}' exists already.")
    quota_count_check(owner=owner, kind="datasets")
    # Never read(limit + 1) from a file on disk: Python allocates the whole limit (200 MB) before reading.
    want = settings.MAX_UPLOAD_BYTES if file.size is None else min(file.size, settings.MAX_UPLOAD_BYTES)
    raw = file.read(want + 1)
    if len(raw) > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES} bytes.")
    x, y, fmt, extra = _parse(raw, label_column, image_mode, image_size)
    x, y = _check_arrays(x, y)
    quota_stored_bytes_check(owner=owner, adding=x.nbytes + y.nbytes)
    rel = f"files/datasets/{owner.pk}/{uuid.uuid4().hex}.npz"
    path = settings.DATA_DIR / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, **extra)
    try:
        with transaction.atomic():
            quota_count_check(owner=owner, kind="datasets")  # with the user's row locked
            return Dataset.objects.create(
                owner=owner, name=name, file=rel, original_format=fmt, n_samples=len(y), n_features=x.shape[1],
                classes=sorted(int(c) for c in np.unique(y)), size_bytes=path.stat().st_size,
            )
    except IntegrityError:
        path.unlink(missing_ok=True)
        raise Conflict(f"A dataset named '{name}' exists already.")
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def dataset_delete(*, owner: Any, name: str) -> None:
    dataset = dataset_get(owner=owner, name=name)
    users = [e.name for e in Experiment.objects.filter(owner=owner, options__benchmark__dataset=name)
             if e.options.get("benchmark", {}).get("name") == "dataset"]
    if users:
        raise Conflict(f"Dataset '{name}' is used by experiment '{users[0]}'; delete that experiment first.")
    path = settings.DATA_DIR / dataset.file
    dataset.delete()
    path.unlink(missing_ok=True)
