"""Zips of images in class folders: read like torchvision's ImageFolder, every size bounded before decoding."""
from __future__ import annotations

import io
import stat
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from clserver.experiments import services as experiments
from clserver.experiments.job import ExperimentJob
from clserver.models import Dataset

MB = 1024 * 1024
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


@pytest.fixture
def files(settings, tmp_path: Path) -> Path:
    settings.DATA_DIR = tmp_path
    settings.MAX_UPLOAD_BYTES = 2 * MB
    return tmp_path


def png(colour: tuple[int, int, int] | int, size: tuple[int, int] = (8, 8), mode: str = "RGB", seed: int = 0,
        kind: str = "PNG") -> bytes:
    """A tiny image of one colour with a little noise; size is Pillow's (width, height)."""
    noise = np.random.RandomState(seed).randint(0, 20, (size[1], size[0], len(mode)), dtype=np.uint8)
    pixels = np.clip(np.array(colour, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, kind)
    return buffer.getvalue()


def folder_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def three_classes(per_class: int = 8, root: str = "pets/", **image) -> dict[str, bytes]:
    return {f"{root}{name}/{i}.png": png(colour, seed=i, **image)
            for name, colour in COLOURS.items() for i in range(per_class)}


def upload(api, content: bytes, name: str = "pictures", **fields):
    return api.post("/api/datasets/", {"name": name, "file": SimpleUploadedFile("pictures.zip", content), **fields},
                    format="multipart")


def refused(response, files: Path, status: int = 400) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error", "details"} and body["error"].endswith(".") and "\n" not in body["error"]
    assert not Dataset.objects.exists()
    assert not list(files.rglob("*.npz"))
    return body["error"]


def test_an_image_folder_zip_trains_an_experiment_to_completion(transactional_db, api, user, settings):
    members = three_classes(root="")
    members.update({"__MACOSX/cat/._0.png": b"\0\5\26\7", "cat/.DS_Store": b"\0", "dog/": b"",
                    "./eel/./late.png": members["eel/0.png"]})
    response = upload(api, folder_zip(members))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["original_format"], body["n_samples"], body["n_features"], body["classes"]) == ("images", 25, 192,
                                                                                              [0, 1, 2])
    with np.load(settings.DATA_DIR / Dataset.objects.get().file) as stored:
        assert list(stored["class_names"]) == ["cat", "dog", "eel"] and list(stored["input_shape"]) == [3, 8, 8]
        x, y = stored["x"], stored["y"]
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 and list(y) == [0] * 8 + [1] * 8 + [2] * 9
    red = x[0].reshape(3, 8, 8)[0]  # channels first: the cat's red plane
    assert abs(red.mean() - (200 + 9.5) / 255) < 0.05

    experiment = experiments.experiment_setup(owner=user, raw={
        "exp_name": "on-pictures", "benchmark": {"name": "dataset", "dataset": "pictures", "scenario": "new_instances",
                                                 "n_experiences": 2},
        "strategy": {"name": "naive"}, "training": {"epochs": 1, "device": "cpu"}})
    with mock.patch("clserver.jobs.tasks.job_enqueue_now"):
        experiments.experiment_execute(owner=user, name="on-pictures")
    ExperimentJob(experiment.pk).handle()
    experiment.refresh_from_db()
    assert experiment.status == "completed", experiment.error


def test_grayscale_images_default_to_one_channel_and_resize_on_request(api, user, files):
    members = {f"{name}/{i}.png": png(shade, mode="L", seed=i) for name, shade in (("dark", 20), ("light", 220))
               for i in range(3)}
    members["light/big.jpg"] = png(220, size=(16, 12), mode="L", kind="JPEG")
    assert upload(api, folder_zip(members), "gray", image_size="8,8").json()["n_features"] == 64
    assert upload(api, folder_zip(members), "rgb", image_size=" 4 , 6 ", image_mode="RGB").json()["n_features"] == 72
    with np.load(files / Dataset.objects.get(name="gray").file) as stored:
        assert list(stored["input_shape"]) == [1, 8, 8] and stored["x"][-1].mean() > 0.8  # the jpg, resized


def test_sixteen_bit_grayscale_is_scaled_not_clipped(api, user, files):
    members = {}
    for name, level in (("dim", 16384), ("mid", 32768)):
        buffer = io.BytesIO()
        Image.fromarray(np.full((4, 4), level, dtype=np.uint16)).save(buffer, "PNG")
        members[f"{name}/0.png"] = members[f"{name}/1.png"] = buffer.getvalue()
    response = upload(api, folder_zip(members))
    assert response.status_code == 201, response.content
    with np.load(files / Dataset.objects.get().file) as stored:
        assert list(stored["input_shape"]) == [1, 4, 4]
        assert np.allclose(stored["x"][:, 0], [64 / 255] * 2 + [128 / 255] * 2)


def test_images_of_different_sizes_need_an_image_size(api, user, files):
    members = three_classes(per_class=2)
    members["pets/dog/wide.png"] = png(COLOURS["dog"], size=(10, 8))
    error = refused(upload(api, folder_zip(members)), files)
    assert error == ("Image 'pets/cat/0.png' is 8x8 but 'pets/dog/wide.png' is 8x10 (height x width); "
                     "send images of one size or set image_size to resize them.")
    assert upload(api, folder_zip(members), image_size="8,8").status_code == 201


def test_a_corrupt_image_is_named(api, user, files):
    members = three_classes(per_class=2)
    members["pets/eel/broken.png"] = png(COLOURS["eel"])[:60]  # the header, then nothing
    error = refused(upload(api, folder_zip(members)), files)
    assert error == "Image 'pets/eel/broken.png' could not be read: it is damaged or not a PNG or JPEG file."


def test_a_zip_bomb_is_refused_from_its_directory_without_expanding_it(api, user, files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in three_classes(per_class=2).items():
            archive.writestr(name, content)
        with archive.open("pets/eel/bomb.png", "w", force_zip64=True) as member:
            for _ in range(200):
                member.write(bytes(MB))
    assert len(buffer.getvalue()) < MB
    tracemalloc.start()
    started = time.monotonic()
    try:
        response = upload(api, buffer.getvalue())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5
    assert peak < 20 * MB, peak  # 200 MB were never inflated
    error = refused(response, files)
    assert error.startswith("Image 'pets/eel/bomb.png' would expand from ")
    assert error.endswith(f" to {200 * MB} bytes, more than 100 times; the zip is refused unread.")


def understating_zip(members: dict[str, bytes], hidden: int) -> bytes:
    """Members whose directory declares their own bytes (size and CRC) while each deflated stream goes on
    with `hidden` zero bytes."""
    body, directory = b"", b""
    for name, content in members.items():
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = compressor.compress(content) + b"".join(compressor.compress(bytes(MB)) for _ in range(hidden // MB))
        data += compressor.flush()
        crc, encoded = zlib.crc32(content), name.encode()
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), len(content),
                                 len(encoded), 0, 0, 0, 0, 0, len(body)) + encoded
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), len(content), len(encoded), 0)
        body += encoded + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0)
    return body + directory + end


def test_a_directory_that_understates_a_member_never_lets_more_than_it_declares_be_inflated(api, user, files):
    content = understating_zip(three_classes(per_class=2), hidden=50 * MB)  # 300 MB behind 6 tiny images
    assert len(content) < MB
    tracemalloc.start()
    try:
        response = upload(api, content)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 201, response.content
    assert response.json()["n_samples"] == 6 and peak < 20 * MB, peak  # what the directory declares


def test_an_array_inside_a_class_folder_is_a_stray_file_not_an_npz(api, user, files):
    members = three_classes(per_class=1)
    members["pets/cat/x.npy"] = b"\x93NUMPY"
    error = refused(upload(api, folder_zip(members)), files)
    assert error == "The zip holds 'pets/cat/x.npy', which is not a .png, .jpg or .jpeg image; remove it."


def test_images_that_expand_past_the_upload_limit_together_are_refused_unread(api, user, files):
    # Each member compresses only ~2x, but the four declare 2.4 MB together against a 2 MB limit.
    rng = np.random.RandomState(0)
    members = {f"{c}/{i}.png": rng.randint(0, 16, 600_000, dtype=np.uint8).tobytes() for c in "ab" for i in range(2)}
    content = folder_zip(members)
    assert len(content) < 2 * MB
    error = refused(upload(api, content), files, status=413)
    assert error == f"The zip's images expand to {2_400_000} bytes; the limit is {2 * MB} bytes."


def lying_directory(name: str, entries: int) -> bytes:
    """One local header, then zip64 end records declaring `entries` members in a 20 MB directory."""
    encoded = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, 0, 0, 0, 0, 0, 0, len(encoded), 0) + encoded
    end64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, 20 * MB, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(local), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + end64 + locator + end


def test_a_zip_declaring_too_many_files_is_refused_from_its_end_record(api, user, files):
    error = refused(upload(api, lying_directory("cat/0.png", 200_000)), files)
    assert error == "The zip holds 200000 files; at most 100000 are allowed."


def test_too_many_classes_are_refused_before_any_image_is_read(api, user, files):
    members = {f"class-{i:05d}/only.png": b"" for i in range(10_001)}  # never read: each would be corrupt
    error = refused(upload(api, folder_zip(members, zipfile.ZIP_STORED)), files)
    assert error == "The zip holds 10001 class folders; at most 10000 are allowed."


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, header and an empty data chunk: what Pillow reads before it knows the size."""
    header = struct.pack(">2I5B", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"")


@pytest.mark.parametrize("width, height, count", [
    (5000, 4000, "20000000 pixels (4000x5000, height x width)"),
    (20000, 20000, "more than 178956970 pixels"),  # past Pillow's own bound, met while opening
])
def test_an_image_with_too_many_pixels_is_refused_from_its_header(api, user, files, width, height, count):
    members = three_classes(per_class=1)
    members["pets/cat/huge.png"] = png_header(width, height)
    error = refused(upload(api, folder_zip(members)), files)
    assert error == f"Image 'pets/cat/huge.png' has {count}; at most 16777216 pixels per image are allowed."


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in three_classes(per_class=1).items():
            archive.writestr(name, content)
        link = zipfile.ZipInfo("pets/cat/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize("extra, words", [
    ({"pets/cat/notes.txt": b"hello"}, "The zip holds 'pets/cat/notes.txt', which is not a .png, .jpg or .jpeg "
                                       "image; remove it."),
    ({"../evil.png": b""}, "The zip holds '../evil.png', a path outside its own folders; store relative paths only."),
    ({"/etc/evil.png": b""}, "a path outside its own folders"),
    ({"pets/loose.png": png(0)}, "Image 'pets/loose.png' is not inside a class folder"),
])
def test_members_that_are_not_images_in_class_folders_are_refused(api, user, files, extra, words):
    members = three_classes(per_class=1)
    members.update(extra)
    assert words in refused(upload(api, folder_zip(members)), files)


def test_a_symbolic_link_member_is_refused(api, user, files):
    error = refused(upload(api, symlink_zip()), files)
    assert error == "The zip holds 'pets/cat/link.png', a symbolic link; store the image itself."


@pytest.mark.parametrize("members, fields, words", [
    ({"pets/cat/0.png": png(0), "pets/cat/1.png": png(1)}, {}, "images of one class only ('cat')"),
    ({"readme.md": b"hi"}, {}, "'readme.md', which is not a .png"),
    ({"cat/0.png": png(0), "dog/0.png": png(1)}, {"image_size": "0,8"}, "is not 'height,width'"),
    ({"cat/0.png": png(0), "dog/0.png": png(1)}, {"image_mode": "CMYK"}, "image_mode"),
    ({"cat/0.png": png(0), "dog/0.png": png(1)}, {"image_size": "200,200"}, "120000 features; at most 4096"),
])
def test_other_refusals_leave_nothing_behind(api, user, files, members, fields, words):
    assert words in refused(upload(api, folder_zip(members), **fields), files)


def test_image_fields_with_another_format_are_refused(api, user, files):
    response = upload(api, b"a,label\n1,0\n2,1\n", image_size="8,8")
    assert refused(response, files) == "image_mode and image_size apply only to a zip of images in class folders."
