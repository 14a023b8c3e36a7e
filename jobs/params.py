"""Job parameters per kind, validated at submit. Unset values take the backend's defaults at run time."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jobs.errors import InvalidParameters
from jobs.keys import DEFAULT_IMAGE_FORMAT, ImageFormat
from jobs.lifecycle import JobKind

MAX_SIDE = 2048
MIN_SIDE = 64
SIZE_MULTIPLE = 16
MAX_STEPS = 200
MAX_NEW_TOKENS = 4096
SEED_MAX = 2**31 - 1
MAX_CFG = 20.0
#: The range of a caption's `max_pixels`: Ovis-U1's preprocessing resizes an image to 448x448 pixels at least
#: and 1792x1792 at most; a cap below the first would show the model images smaller than it ever gets.
MIN_MAX_PIXELS = 448 * 448
MAX_MAX_PIXELS = 1792 * 1792
#: Quality of JPEG and WebP outputs when a job or an item sets none (PNG is lossless: no quality).
DEFAULT_QUALITY = 90
#: How a format may be spelled besides its own name.
_FORMAT_ALIASES = {"jpg": "jpeg"}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Job seed; each item's seed is derived from it and the item's id.
    seed: int = Field(default=42, ge=0, le=SEED_MAX)


class CaptionParams(_Params):
    """Captioning: the question put to the model and how long an answer may be."""

    prompt: str | None = Field(default=None, min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    #: 0 means greedy decoding.
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    #: The most pixels the model's preprocessing resizes an image to (fewer visual tokens, faster, less
    #: detail); 0 or unset: the model's own bound. Kept as 0 where given, so that an item's 0 undoes a
    #: job's cap (None would let the job's value through).
    max_pixels: int | None = None

    @field_validator("max_pixels")
    @classmethod
    def _pixel_cap(cls, value: int | None) -> int | None:
        if value and not MIN_MAX_PIXELS <= value <= MAX_MAX_PIXELS:
            raise ValueError(
                f"must be 0 (the model's default) or within {MIN_MAX_PIXELS}..{MAX_MAX_PIXELS} "
                f"(448x448 to 1792x1792 pixels), got {value}"
            )
        return value


class _ImageParams(_Params):
    """What every image output is written as: PNG unless a job or an item asks for JPEG or WebP."""

    image_format: ImageFormat | None = None
    #: 1-100, for JPEG and WebP (PNG is lossless and takes none); DEFAULT_QUALITY when unset.
    quality: int | None = Field(default=None, ge=1, le=100)

    @field_validator("image_format", mode="before")
    @classmethod
    def _format_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.strip().lower()
            return _FORMAT_ALIASES.get(name, name)
        return value


class GenerateParams(_ImageParams):
    """Text-to-image: output size, sampling steps and text guidance."""

    width: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    height: int | None = Field(default=None, ge=MIN_SIDE, le=MAX_SIDE)
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    txt_cfg: float | None = Field(default=None, ge=0.0, le=MAX_CFG)

    @field_validator("width", "height")
    @classmethod
    def _multiple(cls, value: int | None) -> int | None:
        if value is not None and value % SIZE_MULTIPLE:
            raise ValueError(f"must be a multiple of {SIZE_MULTIPLE} (got {value})")
        return value


class EditParams(_ImageParams):
    """Editing: sampling steps, image and text guidance. The output size follows the input."""

    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    img_cfg: float | None = Field(default=None, ge=0.0, le=MAX_CFG)
    txt_cfg: float | None = Field(default=None, ge=0.0, le=MAX_CFG)


PARAMS_BY_KIND: dict[JobKind, type[_Params]] = {
    JobKind.CAPTION: CaptionParams,
    JobKind.GENERATE: GenerateParams,
    JobKind.EDIT: EditParams,
}


def _explain(error: ValidationError, where: str) -> str:
    parts = []
    for issue in error.errors():
        field = ".".join(str(p) for p in issue["loc"]) or "parameters"
        parts.append(f"{field}: {issue['msg']}")
    return f"{where}: " + "; ".join(parts)


def validate_params(kind: JobKind, values: dict[str, Any], *, where: str = "job parameters") -> _Params:
    """Validate job or item parameters for `kind`; raise InvalidParameters saying what is allowed."""
    model = PARAMS_BY_KIND[kind]
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidParameters(_explain(exc, where)) from None


#: What no store keeps as written: NUL (PostgreSQL refuses it) and lone UTF-16 surrogates (no UTF-8 form).
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def check_chars(value: str, what: str) -> str:
    """Refuse a NUL or a lone surrogate in `value`, naming `what` holds it and where."""
    if match := _BAD_CHARACTER.search(value):
        found = (
            "a NUL character"
            if match.group() == "\x00"
            else "a lone surrogate (a JSON escape \\ud800-\\udfff without its pair)"
        )
        raise InvalidParameters(f"{what} holds {found} at character {match.start() + 1}; remove it")
    return value


def validate_text(text: str, *, max_chars: int, what: str, required: bool) -> str:
    """Check a prompt or instruction: valid text, not empty where required, not over the length limit."""
    text = check_chars(text, what).strip()
    if required and not text:
        raise InvalidParameters(f"{what} is empty")
    if len(text) > max_chars:
        raise InvalidParameters(f"{what} has {len(text)} characters; at most {max_chars} are allowed")
    return text


def item_seed(job_seed: int, key: str) -> int:
    """A seed per item from the job seed and the item's id: independent of batch, worker and retry."""
    digest = hashlib.sha256(f"{job_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & SEED_MAX


def output_format(params: dict[str, Any]) -> tuple[str, int | None]:
    """The image format and quality of an item's output from its resolved parameters (`resolve`): PNG unless
    set, the quality only for lossy formats."""
    image_format = str(params.get("image_format") or DEFAULT_IMAGE_FORMAT)
    if image_format == "png":
        return image_format, None
    quality = params.get("quality")
    return image_format, int(quality) if quality is not None else DEFAULT_QUALITY


def resolve(
    kind: JobKind, job_params: dict[str, Any], item_params: dict[str, Any] | None, defaults: dict[str, Any]
) -> dict[str, Any]:
    """Merge backend defaults, job parameters and item overrides (later wins); None means unset."""
    merged: dict[str, Any] = dict(defaults)
    for layer in (job_params, item_params or {}):
        merged.update({name: value for name, value in layer.items() if value is not None})
    return merged
