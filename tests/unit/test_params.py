from __future__ import annotations

import pytest

from jobs.errors import InvalidParameters
from jobs.lifecycle import JobKind
from jobs.params import DEFAULT_QUALITY, item_seed, output_format, resolve, validate_params, validate_text


def test_valid_generate_params_keep_their_values() -> None:
    params = validate_params(JobKind.GENERATE, {"width": 512, "height": 768, "steps": 30, "seed": 7})
    assert params.model_dump() == {
        "seed": 7,
        "width": 512,
        "height": 768,
        "steps": 30,
        "txt_cfg": None,
        "image_format": None,
        "quality": None,
    }


@pytest.mark.parametrize(
    ("kind", "values", "expected"),
    [
        (JobKind.GENERATE, {"steps": -1}, "steps"),
        (JobKind.GENERATE, {"steps": 100000}, "less than or equal to 200"),
        (JobKind.GENERATE, {"width": 1000}, "multiple of 16"),
        (JobKind.GENERATE, {"height": 8192}, "less than or equal to 2048"),
        (JobKind.EDIT, {"img_cfg": -3}, "img_cfg"),
        (JobKind.CAPTION, {"max_new_tokens": 0}, "max_new_tokens"),
        (JobKind.CAPTION, {"colour": "red"}, "Extra inputs are not permitted"),
        (JobKind.GENERATE, {"image_format": "gif"}, "image_format: Input should be 'png', 'jpeg' or 'webp'"),
        (JobKind.EDIT, {"quality": 0}, "quality: Input should be greater than or equal to 1"),
        (JobKind.EDIT, {"quality": 101}, "less than or equal to 100"),
        (JobKind.CAPTION, {"image_format": "jpeg"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_params_say_what_is_allowed(kind: JobKind, values: dict[str, object], expected: str) -> None:
    with pytest.raises(InvalidParameters, match=expected):
        validate_params(kind, values)


def test_text_limits() -> None:
    with pytest.raises(InvalidParameters, match="empty"):
        validate_text("   ", max_chars=10, what="prompt", required=True)
    with pytest.raises(InvalidParameters, match="at most 10"):
        validate_text("x" * 11, max_chars=10, what="prompt", required=True)
    assert validate_text("", max_chars=10, what="prompt", required=False) == ""


def test_item_seed_depends_on_job_seed_and_id_only() -> None:
    assert item_seed(42, "a") == item_seed(42, "a")
    assert item_seed(42, "a") != item_seed(42, "b")
    assert item_seed(42, "a") != item_seed(43, "a")
    assert 0 <= item_seed(42, "a") < 2**31


def test_resolve_layers_defaults_job_and_item() -> None:
    merged = resolve(
        JobKind.GENERATE,
        {"steps": 20, "width": None},
        {"width": 128},
        {"steps": 50, "width": 1024, "height": 1024},
    )
    assert merged == {"steps": 20, "width": 128, "height": 1024}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, ("png", None)),
        ({"quality": 40}, ("png", None)),  # lossless: no quality
        ({"image_format": "jpeg"}, ("jpeg", DEFAULT_QUALITY)),
        ({"image_format": "webp", "quality": 75}, ("webp", 75)),
    ],
)
def test_outputs_are_png_unless_asked_and_quality_is_for_lossy_formats(
    given: dict[str, object], expected: tuple[str, int | None]
) -> None:
    assert output_format(given) == expected


def test_an_image_format_is_read_whatever_its_case_and_jpg_is_jpeg() -> None:
    assert validate_params(JobKind.EDIT, {"image_format": " JPG "}).model_dump()["image_format"] == "jpeg"
    assert validate_params(JobKind.GENERATE, {"image_format": "WebP"}).model_dump()["image_format"] == "webp"


@pytest.mark.parametrize(
    ("given", "kept"), [(200704, 200704), (3211264, 3211264), ("401408", 401408), (0, 0)]
)
def test_a_caption_pixel_cap_is_0_or_within_the_models_bounds(given: object, kept: int) -> None:
    assert validate_params(JobKind.CAPTION, {"max_pixels": given}).model_dump()["max_pixels"] == kept
    assert validate_params(JobKind.CAPTION, {}).model_dump()["max_pixels"] is None


@pytest.mark.parametrize("given", [200703, 3211265, -1, 448, 10**12])
def test_a_caption_pixel_cap_outside_the_models_bounds_is_refused_saying_what_is_allowed(given: int) -> None:
    with pytest.raises(InvalidParameters) as refused:
        validate_params(JobKind.CAPTION, {"max_pixels": given}, where="item 'a'")
    assert str(refused.value) == (
        "item 'a': max_pixels: Value error, must be 0 (the model's default) or within 200704..3211264 "
        f"(448x448 to 1792x1792 pixels), got {given}"
    )
    with pytest.raises(InvalidParameters, match="max_pixels: Extra inputs are not permitted"):
        validate_params(JobKind.GENERATE, {"max_pixels": 401408})
