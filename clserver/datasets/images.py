"""Zips of images in class folders (torchvision's ImageFolder layout), read in memory with Pillow.

Every bound is checked before a byte is inflated or a pixel decoded: the zip directory's size and
member count, then from the directory each member's name, kind, compression, ratio and declared
size (inflating stops at that size), then each image's header (its format, pixel count, mode and
size). Only then is one image decoded. Members are never written to disk, so their names are only
ever labels.
"""
from __future__ import annotations

import io
import stat
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from PIL import Image

from claas_site.errors import InvalidInput, PayloadTooLarge
from clserver.datasets import limits

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
PILLOW_FORMATS = ("PNG", "JPEG")  # never Pillow's other plugins (EPS alone would run Ghostscript)
IMAGE_MODES = {"L": 1, "RGB": 3}
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # how Pillow opens 16-bit grayscale PNGs
IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}  # with every name starting with a dot
MAX_ZIP_MEMBERS = 100_000
ZIP_DIRECTORY_LIMIT = 16 * 1024 * 1024
NPZ_DIRECTORY_LIMIT = 64 * 1024  # what services' NPZ reader accepts; a larger directory is never an NPZ
MAX_COMPRESSION_RATIO = 100  # PNG and JPEG are compressed already; deflate gains them a few percent
RATIO_FREE_BYTES = 1024 * 1024  # below this a member's ratio does not matter
MAX_IMAGE_PIXELS = 4096 * 4096  # one image's width x height, read from its header
MAX_DECODED_PIXELS = 512 * 1024 * 1024  # all images together: bounds the decoding time
MAX_CLASS_NAME = 255


@dataclass(frozen=True)
class ImageFolder:
    x: np.ndarray  # float32 in [0, 1], one row per image, channels first: (n, C*H*W)
    y: np.ndarray  # int64 class indices into class_names
    class_names: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mode: str


@dataclass(frozen=True)
class _Header:
    name: str
    info: zipfile.ZipInfo
    label: int
    size: tuple[int, int]  # Pillow's (width, height)
    mode: str


def _shown(name: str) -> str:
    """A member name fit for a one-sentence message: printable and short."""
    text = "".join(c if c.isprintable() else "?" for c in name)
    return text if len(text) <= 120 else f"{text[:117]}..."


def _is_array_name(name: str) -> bool:
    """A member numpy.savez writes: at the top of the archive, never inside a folder."""
    return "/" not in name and (name.endswith(".npy") or name in ("x", "y"))


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def zip_is_image_folder(raw: bytes) -> bool:
    """True for a zip to read as images; False for an NPZ (a member is an array) or a zip no reader can open.

    An NPZ directory is a few hundred bytes: a larger one is decided by the first member's local header
    alone, so an NPZ padded with thousands of members still reaches the NPZ reader's own refusal.
    """
    try:
        end = zipfile._EndRecData(io.BytesIO(raw))
        if end is None:
            return False
        if end[zipfile._ECD_SIZE] > NPZ_DIRECTORY_LIMIT:
            length = int.from_bytes(raw[26:28], "little")
            return not _is_array_name(raw[30:30 + length].decode("utf-8", "replace"))
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            return not any(_is_array_name(name) for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return False


def _image_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The image members, every other member checked from the directory alone: ignored or refused."""
    members, declared = [], 0
    for info in archive.infolist():
        name = info.filename
        parts = _parts(name)
        if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
            raise InvalidInput(f"The zip holds '{_shown(name)}', a path outside its own folders; "
                               "store relative paths only.")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidInput(f"The zip holds '{_shown(name)}', a symbolic link; store the image itself.")
        if info.is_dir() or not parts or any(p.startswith(".") or p in IGNORED_NAMES for p in parts):
            continue
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            raise InvalidInput(f"The zip holds '{_shown(name)}', which is not a .png, .jpg or .jpeg image; "
                               "remove it.")
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InvalidInput(f"Image '{_shown(name)}' is encrypted or compressed with a method other than "
                               "deflate; zip the folders without a password and with the default method.")
        if info.file_size > RATIO_FREE_BYTES and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size:
            raise InvalidInput(
                f"Image '{_shown(name)}' would expand from {info.compress_size} to {info.file_size} bytes, "
                f"more than {MAX_COMPRESSION_RATIO} times; the zip is refused unread.",
                details={"member": _shown(name), "expanded_bytes": info.file_size})
        declared += info.file_size
        members.append(info)
    if declared > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The zip's images expand to {declared} bytes; the limit is "
                              f"{settings.MAX_UPLOAD_BYTES} bytes.",
                              details={"expanded_bytes": declared, "limit_bytes": settings.MAX_UPLOAD_BYTES})
    return members


def _classes(members: list[zipfile.ZipInfo]) -> tuple[list[str], list[tuple[zipfile.ZipInfo, int]]]:
    """Class folders as ImageFolder finds them: sorted names, below at most one common top folder."""
    if not members:
        raise InvalidInput("The zip holds no .png, .jpg or .jpeg images.")
    parts = [_parts(info.filename) for info in members]
    if len({p[0] for p in parts}) == 1 and any(len(p) >= 3 for p in parts):  # one common top folder
        parts = [p[1:] for p in parts]
    for info, p in zip(members, parts):
        if len(p) < 2:
            raise InvalidInput(f"Image '{_shown(info.filename)}' is not inside a class folder; "
                               "put each image in <class>/<image>.")
        if len(p[0]) > MAX_CLASS_NAME:
            raise InvalidInput(f"A class folder's name is {len(p[0])} characters; at most {MAX_CLASS_NAME} "
                               "are allowed.")
    names = sorted({p[0] for p in parts})
    if len(names) > limits.MAX_CLASSES:
        raise InvalidInput(f"The zip holds {len(names)} class folders; at most {limits.MAX_CLASSES} are allowed.")
    if len(names) < 2:
        raise InvalidInput(f"The zip holds images of one class only ('{_shown(names[0])}'); "
                           "a dataset needs at least 2 class folders.")
    if len(members) > settings.MAX_DATASET_ROWS:
        raise InvalidInput(f"The zip holds {len(members)} images; at most {settings.MAX_DATASET_ROWS} are allowed.")
    index = {n: i for i, n in enumerate(names)}
    labelled = sorted(((info, index[p[0]]) for info, p in zip(members, parts)), key=lambda m: (m[1], m[0].filename))
    return names, labelled


def _open(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Image.Image:
    """Inflate one member (never past its declared size) and open its header: no pixel is decoded here."""
    with archive.open(info) as stream:
        data = stream.read(info.file_size)
    if len(data) != info.file_size:
        raise ValueError("shorter than the directory says")
    return Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)


def _corrupt(name: str) -> InvalidInput:
    return InvalidInput(f"Image '{_shown(name)}' could not be read: it is damaged or not a PNG or JPEG file.",
                        details={"file": _shown(name)})


def _too_many_pixels(name: str, count: str) -> InvalidInput:
    return InvalidInput(f"Image '{_shown(name)}' has {count}; at most {MAX_IMAGE_PIXELS} pixels per image are "
                        "allowed.", details={"file": _shown(name)})


READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, SyntaxError, NotImplementedError,
               RuntimeError, Image.DecompressionBombError)


def _headers(archive: zipfile.ZipFile, labelled: list[tuple[zipfile.ZipInfo, int]]) -> list[_Header]:
    headers, pixels = [], 0
    for info, label in labelled:
        try:
            with _open(archive, info) as image:
                header = _Header(info.filename, info, label, image.size, image.mode)
        except Image.DecompressionBombError:  # Pillow's own bound, far above ours, met in the header
            raise _too_many_pixels(info.filename, f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels")
        except READ_ERRORS:
            raise _corrupt(info.filename)
        width, height = header.size
        if width * height > MAX_IMAGE_PIXELS:
            raise _too_many_pixels(header.name, f"{width * height} pixels ({height}x{width}, height x width)")
        pixels += width * height
        if pixels > MAX_DECODED_PIXELS:
            raise InvalidInput(f"The images hold more than {MAX_DECODED_PIXELS} pixels together; "
                               "send fewer or smaller images.")
        headers.append(header)
    return headers


def _target_size(headers: list[_Header], size: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) to store: the one asked for, or the one every image has."""
    if size is not None:
        return size
    first = headers[0]
    for other in headers[1:]:
        if other.size != first.size:
            (w1, h1), (w2, h2) = first.size, other.size
            raise InvalidInput(
                f"Image '{_shown(first.name)}' is {h1}x{w1} but '{_shown(other.name)}' is {h2}x{w2} (height x "
                "width); send images of one size or set image_size to resize them.")
    width, height = first.size
    return height, width


def _check_output(n: int, shape: tuple[int, int, int]) -> None:
    features = shape[0] * shape[1] * shape[2]
    if features > settings.MAX_DATASET_COLUMNS:
        raise InvalidInput(f"Images of {shape[0]}x{shape[1]}x{shape[2]} (channels x height x width) give "
                           f"{features} features; at most {settings.MAX_DATASET_COLUMNS} are allowed, "
                           "so set a smaller image_size.")
    nbytes = n * features * 4
    if nbytes > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The images unpack to {nbytes} bytes of float32; the limit is "
                              f"{settings.MAX_UPLOAD_BYTES} bytes.",
                              details={"unpacked_bytes": nbytes, "limit_bytes": settings.MAX_UPLOAD_BYTES})


def _decode(archive: zipfile.ZipFile, header: _Header, mode: str, height: int, width: int) -> np.ndarray:
    try:
        with _open(archive, header.info) as image:
            if image.format == "JPEG":
                image.draft(mode, (width, height))  # decode a large JPEG at a reduced scale
            if image.mode in SIXTEEN_BIT_MODES:  # Pillow's convert would clip 0..65535 at 255, not scale it
                wide = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
                converted = Image.fromarray(wide.astype(np.uint8), "L").convert(mode)
            else:
                converted = image.convert(mode)
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(converted, dtype=np.uint8)
    except READ_ERRORS:
        raise _corrupt(header.name)
    return pixels.reshape(height, width, -1).transpose(2, 0, 1).reshape(-1)  # channels first, as torchvision


def image_folder_read(raw: bytes, *, mode: str | None = None, size: tuple[int, int] | None = None) -> ImageFolder:
    """Read a zip of <class>/<image> (below at most one common folder) into one float32 row per image."""
    try:
        end = zipfile._EndRecData(io.BytesIO(raw))
        if end is None:
            raise InvalidInput("The file is not a readable zip archive.")
        if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ZIP_MEMBERS:
            raise InvalidInput(f"The zip holds {end[zipfile._ECD_ENTRIES_TOTAL]} files; at most "
                               f"{MAX_ZIP_MEMBERS} are allowed.")
        if end[zipfile._ECD_SIZE] > ZIP_DIRECTORY_LIMIT:
            raise InvalidInput(f"The zip's directory is {end[zipfile._ECD_SIZE]} bytes; at most "
                               f"{ZIP_DIRECTORY_LIMIT} are allowed.")
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names, labelled = _classes(_image_members(archive))
            headers = _headers(archive, labelled)
            if mode is None:
                mode = "L" if all(h.mode in GRAYSCALE_MODES for h in headers) else "RGB"
            height, width = _target_size(headers, size)
            shape = (IMAGE_MODES[mode], height, width)
            _check_output(len(headers), shape)
            x = np.empty((len(headers), shape[0] * height * width), dtype=np.float32)
            for row, header in enumerate(headers):
                x[row] = _decode(archive, header, mode, height, width)
            x /= 255.0
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError):
        raise InvalidInput("The file is not a readable zip archive.")  # never the exception's text
    y = np.fromiter((h.label for h in headers), dtype=np.int64, count=len(headers))
    return ImageFolder(x, y, names, shape, mode)
