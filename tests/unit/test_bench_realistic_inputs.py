"""bench/realistic_inputs.py: photos, caption limits, prompts and edits spread as users' do, the same files
for the same seed, and manifests that submission reads as the product reads any manifest."""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobs.lifecycle import JobKind
from jobs.sources import iter_source
from tests.bench_scripts import load_bench_script

inputs_module = load_bench_script("realistic_inputs")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("inputs")
    return inputs_module.write_inputs(folder, captions=40, prompt_count=12, edits=10, seed=7)


def test_photos_are_jpegs_of_mixed_sizes_and_shapes_within_the_long_side_bounds(written: Any) -> None:
    low, high = inputs_module.LONG_SIDE_PX
    shapes = set()
    for photo in written.photos:
        with Image.open(photo.path) as image:
            assert image.format == "JPEG"
            assert image.size == (photo.width, photo.height)
        assert low <= photo.long_side <= high
        shapes.add(
            "landscape"
            if photo.width > photo.height
            else "portrait"
            if photo.width < photo.height
            else "square"
        )
    assert shapes >= {"landscape", "portrait"}
    sides = [photo.long_side for photo in written.photos]
    assert max(sides) > 2 * min(sides)
    assert len({photo.width * 1000 // photo.height for photo in written.photos}) >= 4  # several aspect ratios


def test_the_same_seed_writes_the_same_files(written: Any, tmp_path: Path) -> None:
    again = inputs_module.write_inputs(tmp_path, captions=40, prompt_count=12, edits=10, seed=7)

    for first, second in zip(written.photos + written.edits, again.photos + again.edits, strict=True):
        assert first.path.read_bytes() == second.path.read_bytes()
    for name in ("captions.jsonl", "prompts.jsonl", "edits.jsonl"):
        assert (written.folder / name).read_text() == (tmp_path / name).read_text()


def test_caption_limits_spread_between_40_and_400_tokens() -> None:
    limits = inputs_module.caption_token_limits(4000, random.Random(0))

    assert min(limits) == 40 and max(limits) == 400
    assert 110 <= statistics.median(limits) <= 150
    assert sum(limit < 80 for limit in limits) > 300 and sum(limit > 250 for limit in limits) > 300


def test_prompts_run_from_a_few_words_to_paragraphs() -> None:
    texts = inputs_module.prompts(400, random.Random(0))
    words = [len(text.split()) for text in texts]

    assert min(words) <= 4 and max(words) >= 80
    assert 15 <= statistics.median(words) <= 30
    assert all(text == text.strip() and text for text in texts)


def test_submission_reads_the_manifests_with_per_item_caption_limits(written: Any) -> None:
    captions = list(iter_source(JobKind.CAPTION, str(written.caption_manifest)))
    prompts = list(iter_source(JobKind.GENERATE, str(written.generate_manifest)))
    edits = list(iter_source(JobKind.EDIT, str(written.edit_manifest)))

    assert [item.params for item in captions] == [{"max_new_tokens": n} for n in written.token_limits]
    assert all(Path(item.source).is_file() for item in captions + edits)
    assert [item.text for item in prompts] == written.prompts
    assert all(item.text in inputs_module.EDIT_INSTRUCTIONS for item in edits)


def test_the_summary_describes_each_task(written: Any) -> None:
    summary = written.summary()

    assert (
        summary["caption"]["items"] == 40
        and summary["generate"]["items"] == 12
        and summary["edit"]["items"] == 10
    )
    assert summary["caption"]["max_new_tokens"]["min"] == min(written.token_limits)
    assert summary["caption"]["long_side_px"]["max"] == max(photo.long_side for photo in written.photos)


def test_sample_photos_travel_as_a_folder(tmp_path: Path) -> None:
    copied = inputs_module.export_sample_photos(tmp_path / "photos")

    assert sorted(path.name for path in copied) == sorted(inputs_module.SAMPLE_PHOTOS)
    photos = inputs_module.load_sample_photos(tmp_path / "photos")
    assert len(photos) == len(inputs_module.SAMPLE_PHOTOS) and all(photo.mode == "RGB" for photo in photos)
    with pytest.raises(FileNotFoundError, match="export-photos"):
        inputs_module.load_sample_photos(tmp_path)
