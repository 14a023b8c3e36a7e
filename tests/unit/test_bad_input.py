"""Bad input end to end through the embedded runner (SQLite, local files, the torch-free backend).

Inputs that cannot be used end as failed items with their own error code and a message that says why, each
logged as one WARNING line; images in unusual formats are converted (see workers/images.py); nothing else
fails. Special files are refused without blocking, sizes before reading, forged tar member ranges before
allocating. Parameters, prompts and manifests that are wrong are refused at submit, saying what is allowed,
and leave no job behind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from gpu_model import BackendOptions, BackendOutOfMemory, CaptionRequest
from gpu_model.fake import FakeBackend
from jobs.db import session_scope
from jobs.errors import InputNotAllowed, InvalidParameters, InvalidSource, OvisBatchError
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.settings import Settings
from tests.helpers import embedded_settings, sample_photo
from workers.embedded import EmbeddedRunner

MAX_BYTES = 500_000
MAX_PIXELS = 4_000_000


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and holds no pixels: dimensions are all a decoder sees first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _inputs(folder: Path) -> dict[str, tuple[bytes | None, str | None]]:
    """name -> (file content, expected error code or None for success); None content: no file."""
    photo = sample_photo("chelsea.png", 96)
    jpeg = _encoded(photo, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    palette_alpha = photo.convert("P")
    palette_alpha.info["transparency"] = 0
    noise = Image.frombytes("RGB", (600, 600), os.urandom(600 * 600 * 3))
    return {
        "good.jpg": (jpeg, None),
        "good.png": (_encoded(sample_photo("astronaut.png", 96), "PNG"), None),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "invalid_image"),
        "zero-bytes.jpg": (b"", "invalid_image"),
        "not-an-image.jpg": (b"%PDF-1.4 this is not a picture\n", "invalid_image"),
        "html-named-png.png": (b"<html><body>hello</body></html>", "invalid_image"),
        "decompression-bomb.png": (_encoded(Image.new("L", (3000, 3000)), "PNG"), "image_too_large"),
        "huge-dimensions.png": (_png_header_only(100_000, 100_000), "image_too_large"),
        "too-many-bytes.png": (_encoded(noise, "PNG", compress_level=0), "image_too_large"),
        "cmyk.jpg": (_encoded(photo.convert("CMYK"), "JPEG"), None),
        "16-bit-grey.png": (_encoded(photo.convert("L").convert("I;16"), "PNG"), None),
        "palette.png": (_encoded(photo.convert("P"), "PNG"), None),
        "palette-transparent.png": (_encoded(palette_alpha, "PNG"), None),
        "alpha.png": (_encoded(photo.convert("RGBA"), "PNG"), None),
        "grey-alpha.png": (_encoded(photo.convert("LA"), "PNG"), None),
        "animated.gif": (animated.getvalue(), None),
        "exif-rotated.jpg": (
            _encoded(Image.new("RGB", (80, 40), "white"), "JPEG", exif=exif.tobytes()),
            None,
        ),
        "missing.jpg": (None, "input_missing"),
    }


def _items(settings: Settings, job_id: str) -> dict[str, Item]:
    with session_scope(settings.resolved_database_url) as session:
        return {i.key: i for i in session.scalars(select(Item).where(Item.job_id == job_id))}


def _special_files(folder: Path) -> dict[str, tuple[bytes | None, str | None]]:
    """Inputs that are no regular file, and one too large to read, made in `folder`; read whole, each would
    block the worker (a FIFO waits for a writer) or fill its memory (a sparse file reads as zeros)."""
    os.mkfifo(folder / "fifo.jpg")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "socket.jpg"))
    listener.close()  # the socket file stays
    (folder / "a-folder.jpg").mkdir()
    with open(folder / "sparse-600mb.png", "wb") as sparse:
        sparse.truncate(600 * 1024 * 1024)
    return {
        "fifo.jpg": (b"", "input_missing"),
        "socket.jpg": (b"", "input_missing"),
        "a-folder.jpg": (b"", "input_missing"),
        "sparse-600mb.png": (b"", "image_too_large"),
    }


def _tar_members(folder: Path) -> dict[str, tuple[bytes | None, str | None]]:
    """Member addresses (`shard.tar#member@offset+size`) of a real shard: one right, the others forged."""
    members = {
        "m.png": _encoded(sample_photo("coffee.png", 64), "PNG"),
        "n.jpg": _encoded(sample_photo(), "JPEG"),
    }
    with tarfile.open(folder / "shard.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(folder / "shard.tar") as tar:
        m, n = tar.getmember("m.png"), tar.getmember("n.jpg")
    end = (folder / "shard.tar").stat().st_size
    os.mkfifo(folder / "fifo.tar")
    return {
        f"shard.tar#m.png@{m.offset_data}+{m.size}": (None, None),
        "shard.tar#m.png@0+1000000000000000": (None, "image_too_large"),  # the size alone refuses it
        f"shard.tar#m.png@{m.offset_data}+{m.size + 7}": (None, "input_missing"),  # the header says otherwise
        f"shard.tar#m.png@{n.offset_data}+{n.size}": (None, "input_missing"),  # another member's range
        f"shard.tar#m.png@{m.offset_data + 512}+{m.size}": (None, "input_missing"),  # inside the data
        f"shard.tar#m.png@{m.offset_data + 3}+{m.size}": (None, "input_missing"),  # off the block grid
        f"shard.tar#m.png@{end}+{m.size}": (None, "input_missing"),  # past the shard's end
        "fifo.tar#m.png@512+100": (None, "input_missing"),
    }


def test_a_caption_job_mixing_every_kind_of_bad_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = embedded_settings(
        tmp_path,
        max_image_bytes=MAX_BYTES,
        max_image_pixels=MAX_PIXELS,
        input_roots=[str(tmp_path), "/dev/zero"],  # a root may name one object: here a device
    )
    folder = tmp_path / "in"
    folder.mkdir()
    cases = _inputs(folder)
    for name, (content, _) in cases.items():
        if content is not None:
            (folder / name).write_bytes(content)
    # A link inside the allowed root to a file outside it: the worker reads real paths only.
    (folder / "link-out-of-root.jpg").symlink_to("/etc/hostname")
    cases["link-out-of-root.jpg"] = (b"", "input_not_allowed")
    cases.update(_special_files(folder))
    cases.update(_tar_members(folder))
    images = {name: f"in/{name}" for name in cases}
    cases["/dev/zero"], images["/dev/zero"] = (b"", "input_missing"), "/dev/zero"
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": name, "image": image}) + "\n" for name, image in images.items())
    )

    with caplog.at_level(logging.WARNING, logger="workers.prepare"):
        report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(manifest))

    items = _items(settings, report.id)
    table = {name: (items[name].status, items[name].error_code) for name in cases}
    for name, (status, code) in table.items():
        print(f"BAD INPUT {name:26} -> {status:9} {code or ''}  {(items[name].error_message or '')[:90]}")
    expected = {name: ("failed", code) if code else ("succeeded", None) for name, (_, code) in cases.items()}
    assert table == expected
    failed = sum(code is not None for _, code in cases.values())
    assert (report.status, report.failed, report.succeeded) == ("partial", failed, len(cases) - failed)
    # Each failure says why, in words a user can act on.
    messages = {name: items[name].error_message or "" for name in cases}
    assert "OVIS_BATCH_MAX_IMAGE_PIXELS" in messages["decompression-bomb.png"]
    assert "10000000000 pixels" in messages["huge-dimensions.png"]
    assert "OVIS_BATCH_MAX_IMAGE_PIXELS" in messages["huge-dimensions.png"]
    assert "OVIS_BATCH_MAX_IMAGE_BYTES" in messages["too-many-bytes.png"]
    assert "0 bytes" in messages["zero-bytes.jpg"]
    assert "does not exist" in messages["missing.jpg"]
    assert "outside the allowed input roots" in messages["link-out-of-root.jpg"]
    assert "is a FIFO, not a file" in messages["fifo.jpg"] and "a socket" in messages["socket.jpg"]
    assert "is a character device" in messages["/dev/zero"]
    assert f"has {600 * 1024 * 1024} bytes" in messages["sparse-600mb.png"]
    assert "OVIS_BATCH_MAX_IMAGE_BYTES" in messages["shard.tar#m.png@0+1000000000000000"]
    forged = [name for name in cases if name.startswith("shard.tar") and cases[name][1] == "input_missing"]
    assert all(messages[name].startswith(f"{folder}/{name}: ") for name in forged), messages  # names the item
    assert any("names 'n.jpg', not 'm.png'" in messages[name] for name in forged)
    # Bad input is expected: one WARNING line per failed item, no traceback, nothing logged louder.
    records = [r for r in caplog.records if r.name == "workers.prepare" and r.levelno >= logging.WARNING]
    bad = {name for name, (_, code) in cases.items() if code}
    assert sorted(r.getMessage().split()[1] for r in records) == sorted(bad)
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records)
    # Converted inputs were seen upright and whole: the fake model's caption names the size it got.
    assert "40x80" in (items["exif-rotated.jpg"].output or "")
    assert "40x30" in (items["animated.gif"].output or "")
    assert all(items[name].attempts == 1 for name in cases)


class _TooBigForTheGpu(FakeBackend):
    """Out of memory above 2 images, and for the one image that is too much even alone."""

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        if len(requests) > 2 or any(r.image.width == 95 for r in requests):
            raise BackendOutOfMemory("CUDA out of memory (simulated)")
        return super().caption(requests)


def test_out_of_memory_splits_to_batch_one_and_fails_only_what_never_fits(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path, chunk_size=8)
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(8):
        photo = sample_photo("coffee.png", 96)
        if index == 5:
            photo = photo.resize((95, photo.height))
        photo.save(folder / f"p{index}.png")
    backend = _TooBigForTheGpu(BackendOptions(max_batch={"caption": 8}))
    report = EmbeddedRunner(settings, backend).run(JobKind.CAPTION, str(folder))
    items = _items(settings, report.id)
    assert (report.succeeded, report.failed) == (7, 1)
    assert (items["p5.png"].status, items["p5.png"].error_code) == ("failed", "out_of_memory")
    assert "out of memory at batch 1" in (items["p5.png"].error_message or "")
    assert all(i.attempts == 1 for i in items.values()), "a split is part of the same attempt"


# -- refused at submit ---------------------------------------------------------------------------------------
PARAMETER_CASES: list[tuple[JobKind, dict[str, Any], str]] = [
    (JobKind.GENERATE, {"steps": -1}, "steps: Input should be greater than or equal to 1"),
    (JobKind.GENERATE, {"steps": 1_000_000}, "steps: Input should be less than or equal to 200"),
    (JobKind.GENERATE, {"width": 100}, "width: Value error, must be a multiple of 16"),
    (JobKind.GENERATE, {"width": 4096}, "width: Input should be less than or equal to 2048"),
    (JobKind.GENERATE, {"height": 32}, "height: Input should be greater than or equal to 64"),
    (JobKind.GENERATE, {"txt_cfg": 100}, "txt_cfg: Input should be less than or equal to 20"),
    (JobKind.GENERATE, {"seed": -5}, "seed: Input should be greater than or equal to 0"),
    (JobKind.GENERATE, {"strength": 0.5}, "strength: Extra inputs are not permitted"),
    (JobKind.CAPTION, {"max_new_tokens": 0}, "max_new_tokens: Input should be greater than or equal to 1"),
    (JobKind.CAPTION, {"max_new_tokens": 10**9}, "max_new_tokens: Input should be less than or equal to"),
    (JobKind.CAPTION, {"temperature": -1}, "temperature: Input should be greater than or equal to 0"),
    (JobKind.CAPTION, {"prompt": ""}, "prompt: String should have at least 1 character"),
    (JobKind.EDIT, {"img_cfg": -1}, "img_cfg: Input should be greater than or equal to 0"),
]


@pytest.mark.parametrize(("kind", "params", "expected"), PARAMETER_CASES)
def test_invalid_parameters_are_refused_saying_what_is_allowed(
    tmp_path: Path, kind: JobKind, params: dict[str, Any], expected: str
) -> None:
    settings = embedded_settings(tmp_path)
    (tmp_path / "p.txt").write_text("a cat\n")
    source = _source_for(kind, tmp_path)
    runner = EmbeddedRunner(settings)
    with pytest.raises(InvalidParameters) as refused:
        runner.client.submit(kind, source, params=params)
    assert expected in str(refused.value)
    assert refused.value.error_code == "invalid_parameters"
    assert runner.client.list() == []


def _source_for(kind: JobKind, home: Path) -> str:
    if kind is JobKind.GENERATE:
        return str(home / "p.txt")
    sample_photo().save(home / "cat.jpg")
    if kind is JobKind.CAPTION:
        return str(home / "cat.jpg").rsplit("/", 1)[0]
    manifest = home / "edits.jsonl"
    manifest.write_text(json.dumps({"image": "cat.jpg", "instruction": "make it red"}) + "\n")
    return str(manifest)


SOURCE_CASES: list[tuple[str, JobKind, str, str, type[OvisBatchError]]] = [
    # (case, kind, file name, content, error) -> the message must name the line
    (
        "bad JSON",
        JobKind.GENERATE,
        "m.jsonl",
        '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",\n',
        InvalidSource,
    ),
    ("not an object", JobKind.GENERATE, "m.jsonl", '{"prompt": "a"}\n["b"]\n', InvalidSource),
    ("no prompt field", JobKind.GENERATE, "m.jsonl", '{"prompt": "a"}\n{"text": ""}\n', InvalidSource),
    ("no image field", JobKind.CAPTION, "m.csv", "id,image\na,cat.jpg\nb,\n", InvalidSource),
    ("blank prompt", JobKind.GENERATE, "m.jsonl", '{"id": "x", "prompt": "   "}\n', InvalidParameters),
    (
        "over-long prompt",
        JobKind.GENERATE,
        "m.jsonl",
        json.dumps({"id": "x", "prompt": "y" * 5000}),
        InvalidParameters,
    ),
    (
        "bad item steps",
        JobKind.GENERATE,
        "m.jsonl",
        '{"id": "x", "prompt": "a", "steps": 0}\n',
        InvalidParameters,
    ),
    (
        "duplicate ids",
        JobKind.GENERATE,
        "m.jsonl",
        '{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n',
        InvalidSource,
    ),
    ("empty manifest", JobKind.GENERATE, "m.jsonl", "\n\n", InvalidSource),
    (
        "path traversal",
        JobKind.CAPTION,
        "m.jsonl",
        '{"image": "../../../../../../etc/passwd"}\n',
        InputNotAllowed,
    ),
]
SOURCE_MESSAGES = {
    "bad JSON": r"line 3: not valid JSON",
    "not an object": "line 2: expected a JSON object",
    # The JSONL fast path (pyarrow) knows record numbers, not line numbers: equal without blank lines.
    "no prompt field": r"(line|record) 2: no prompt field",
    "no image field": "line 3: no image field",
    "blank prompt": "item 'x': prompt is empty",
    "over-long prompt": r"has 5000 characters; at most 4000 are allowed",
    "bad item steps": r"item 'x': steps: Input should be greater than or equal to 1",
    "duplicate ids": "item ids must be unique within a job",
    "empty manifest": "holds no items",
    "path traversal": "outside the allowed input roots",
}


@pytest.mark.parametrize(
    ("case", "kind", "name", "content", "error"), SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES]
)
def test_bad_manifests_and_prompts_are_refused_at_submit(
    tmp_path: Path, case: str, kind: JobKind, name: str, content: str, error: type[OvisBatchError]
) -> None:
    settings = embedded_settings(tmp_path)
    sample_photo().save(tmp_path / "cat.jpg")
    (tmp_path / name).write_text(content)
    runner = EmbeddedRunner(settings)
    with pytest.raises(error) as refused:
        runner.client.submit(kind, str(tmp_path / name))
    assert re.search(SOURCE_MESSAGES[case], str(refused.value)), str(refused.value)
    print(f"REFUSED AT SUBMIT {case:17} -> {refused.value.error_code}: {str(refused.value)[-100:]}")
    assert runner.client.list() == []


def test_a_bad_record_after_a_blank_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"prompt": "a"}\n\n{"text": ""}\n')
    with pytest.raises(InvalidSource, match="line 3: no prompt field"):
        EmbeddedRunner(embedded_settings(tmp_path)).client.submit(JobKind.GENERATE, str(manifest))
