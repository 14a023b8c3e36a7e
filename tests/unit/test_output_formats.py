"""Image outputs in PNG, JPEG or WebP with their provenance embedded, and the same provenance in every row:
encoded alone, then through the embedded runner (SQLite, local storage), read back with README's reader."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy import select

from jobs.db import session_scope
from jobs.export import ExportOptions, write_export
from jobs.lifecycle import JobKind
from jobs.models import Item
from jobs.provenance import FIELDS
from jobs.settings import Settings
from tests.helpers import embedded_settings, sample_photo, write_photos
from tests.provenance_helpers import as_embedded, readme_reader
from workers.embedded import EmbeddedRunner
from workers.images import JPEG_XMP_BYTES, encode_output, xmp_packet
from workers.reuse import version

PROVENANCE = {
    "kind": "generate",
    "prompt": 'a "fox" & <hound>\n\tunder the moon, café 🦊',
    "seed": 1234,
    "steps": 4,
    "txt_cfg": 5.0,
    "width": 32,
    "height": 16,
    "model": "AIDC-AI/Ovis-U1-3B",
    "model_revision": None,
    "backend": "fake",
    "version": "0.1.0",
}


def _half_transparent() -> Image.Image:
    image = Image.new("RGBA", (32, 16), (200, 30, 30, 255))
    image.paste((0, 0, 255, 0), (0, 0, 16, 16))  # the left half fully transparent
    return image


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def _read_back(tmp_path: Path, data: bytes, name: str) -> dict[str, str]:
    path = tmp_path / name
    path.write_bytes(data)
    return readme_reader()(path)


@pytest.mark.parametrize(
    ("image_format", "pillow", "mode"), [("png", "PNG", "RGBA"), ("webp", "WEBP", "RGBA")]
)
def test_png_and_webp_keep_alpha(image_format: str, pillow: str, mode: str) -> None:
    image = _open(encode_output(_half_transparent(), image_format, 90, {}))
    assert (image.format, image.mode) == (pillow, mode)
    assert image.getpixel((2, 2))[3] == 0 and image.getpixel((30, 2))[3] == 255  # type: ignore[index]


def test_jpeg_composites_alpha_on_white() -> None:
    image = _open(encode_output(_half_transparent(), "jpeg", 95, {}))
    assert (image.format, image.mode) == ("JPEG", "RGB")
    assert all(channel > 245 for channel in image.getpixel((2, 8)))  # type: ignore[union-attr]
    red, green, blue = image.getpixel((28, 8))  # type: ignore[misc]
    assert red > 170 and green < 70 and blue < 70


@pytest.mark.parametrize("image_format", ["jpeg", "webp"])
def test_quality_trades_size_for_fidelity(image_format: str) -> None:
    photo = sample_photo(size=256)
    low, high = (len(encode_output(photo, image_format, quality, {})) for quality in (10, 95))
    assert low < high


@pytest.mark.parametrize(("image_format", "name"), [("png", "a.png"), ("jpeg", "a.jpg"), ("webp", "a.webp")])
def test_provenance_reads_back_with_the_readme_reader(tmp_path: Path, image_format: str, name: str) -> None:
    data = encode_output(sample_photo(size=64), image_format, 80, PROVENANCE)
    assert _read_back(tmp_path, data, name) == as_embedded(PROVENANCE)


def test_xmp_replaces_what_xml_cannot_hold_and_a_png_keeps_it(tmp_path: Path) -> None:
    made = PROVENANCE | {"prompt": "bell\x07 and form feed\x0c"}
    png = _read_back(tmp_path, encode_output(sample_photo(size=32), "png", None, made), "a.png")
    assert png["prompt"] == "bell\x07 and form feed\x0c"
    jpeg = _read_back(tmp_path, encode_output(sample_photo(size=32), "jpeg", 80, made), "a.jpg")
    assert jpeg["prompt"] == "bell\ufffd and form feed\ufffd"


def test_a_jpeg_shortens_a_prompt_its_xmp_cannot_hold(tmp_path: Path) -> None:
    made = PROVENANCE | {"prompt": '"é" & ' * 12_000}
    assert len(xmp_packet(as_embedded(made))) > JPEG_XMP_BYTES
    read = _read_back(tmp_path, encode_output(sample_photo(size=32), "jpeg", 80, made), "a.jpg")
    assert read["prompt"].endswith("\u2026") and made["prompt"].startswith(read["prompt"][:-1])
    assert read["seed"] == "1234" and len(read["prompt"]) > 1000


# -- through the embedded runner ----------------------------------------------------------------------------
def _items(settings: Settings, job_id: str) -> dict[str, dict[str, Any]]:
    with session_scope(settings.resolved_database_url) as session:
        rows = session.execute(
            select(Item.key, Item.output, Item.provenance).where(Item.job_id == job_id)
        ).all()
    return {key: {"output": output, "provenance": made} for key, output, made in rows}


def test_each_item_gets_its_format_and_its_provenance_in_the_file_and_the_rows(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    manifest = tmp_path / "prompts.jsonl"
    records = [
        {"id": "fox", "prompt": "a fox"},
        {"id": "owl", "prompt": "an owl", "image_format": "webp", "quality": 70, "seed": 5},
        {"id": "cat.jpg", "prompt": "a cat", "image_format": "png", "steps": 2},
    ]
    manifest.write_text("".join(json.dumps(record) + "\n" for record in records))
    report = EmbeddedRunner(settings).run(
        JobKind.GENERATE, str(manifest), params={"image_format": "jpeg", "width": 96, "height": 64}
    )
    assert report.succeeded == 3
    items = _items(settings, report.id)
    folder = tmp_path / "outputs" / report.id
    assert {key: item["output"] for key, item in items.items()} == {
        "fox": str(folder / "fox.jpg"),
        "owl": str(folder / "owl.webp"),
        "cat.jpg": str(folder / "cat.jpg.png"),
    }
    fox = items["fox"]["provenance"]
    assert fox == {
        "kind": "generate",
        "prompt": "a fox",
        "seed": fox["seed"],
        "steps": 4,  # the backend's default
        "txt_cfg": 5.0,
        "width": 96,
        "height": 64,
        "image_format": "jpeg",
        "quality": 90,
        "model": settings.model_path,
        "model_revision": None,
        "backend": "fake",
        "version": version(),
    }
    assert (items["owl"]["provenance"]["seed"], items["owl"]["provenance"]["quality"]) == (5, 70)
    assert (items["cat.jpg"]["provenance"]["steps"], items["cat.jpg"]["provenance"]["quality"]) == (2, None)
    read = readme_reader()
    for item in items.values():
        assert read(item["output"]) == as_embedded(item["provenance"])
    assert Image.open(items["owl"]["output"]).format == "WEBP"

    write_export(settings, report.id, str(tmp_path / "rows.parquet"), ExportOptions("parquet"))
    rows = {row["id"]: row for row in pq.read_table(tmp_path / "rows.parquet").to_pylist()}
    for key, item in items.items():
        made = item["provenance"]
        assert {name: rows[key][name] for name in FIELDS["generate"]} == {
            name: made.get(name) for name in FIELDS["generate"]
        }


def test_an_edit_records_the_size_of_its_output_and_both_guidance_scales(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "img", count=1, size=80)
    manifest = tmp_path / "edits.csv"
    manifest.write_text("id,image,instruction,img_cfg\nred,img/photo000.jpg,make it red,2.5\n")
    report = EmbeddedRunner(settings).run(JobKind.EDIT, str(manifest), params={"image_format": "webp"})
    [item] = _items(settings, report.id).values()
    made = item["provenance"]
    with Image.open(item["output"]) as image:
        assert (made["width"], made["height"]) == image.size
    assert (made["prompt"], made["img_cfg"], made["txt_cfg"]) == ("make it red", 2.5, 6.0)
    assert readme_reader()(item["output"]) == as_embedded(made)


def test_captions_record_the_prompt_actually_used(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    write_photos(tmp_path / "in", count=2)
    report = EmbeddedRunner(settings).run(JobKind.CAPTION, str(tmp_path / "in"), params={"max_new_tokens": 9})
    results = tmp_path / "outputs" / report.id / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["Describe this image in detail."] * 2  # the backend's default
    assert {(row["kind"], row["max_new_tokens"], row["temperature"], row["backend"]) for row in rows} == {
        ("caption", 9, 0.0, "fake")
    }
    assert all(isinstance(row["seed"], int) and row["version"] == version() for row in rows)
    assert "steps" not in rows[0] and "image_format" not in rows[0]


def test_a_png_is_never_reused_for_a_jpeg_and_a_reused_output_keeps_its_provenance(tmp_path: Path) -> None:
    settings = embedded_settings(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\na blue boat\n")
    runner = EmbeddedRunner(settings)
    png = runner.run(JobKind.GENERATE, str(prompts))
    jpeg = runner.run(JobKind.GENERATE, str(prompts), params={"image_format": "jpeg"}, skip_existing=True)
    assert (jpeg.succeeded, jpeg.skipped) == (2, 0)
    lower = runner.run(
        JobKind.GENERATE, str(prompts), params={"image_format": "jpeg", "quality": 50}, skip_existing=True
    )
    assert lower.skipped == 0  # another quality: another file
    again = runner.run(JobKind.GENERATE, str(prompts), params={"image_format": "jpeg"}, skip_existing=True)
    assert again.skipped == 2
    made, kept = _items(settings, jpeg.id), _items(settings, again.id)
    assert kept == made
    assert all(item["output"].endswith(".jpg") for item in kept.values())
    assert all(item["output"].endswith(".png") for item in _items(settings, png.id).values())
