"""What every output says about how it was made: the same fields in the image file, in `results.jsonl` and in
every export.

A worker records them with each result (the item's `provenance` column), in the same statement as the output,
because some of them only it knows: the backend's defaults for what the job left unset, the caption prompt
actually put to the model, the model it runs, ovis-batch's version and the size of an edited image. Image
outputs carry them too: PNG as one iTXt chunk per field, JPEG and WebP as an XMP packet (workers.images).
"""

from __future__ import annotations

from typing import Any

from jobs.lifecycle import JobKind

#: Every field and its type; each kind's outputs, rows and exports hold the fields of FIELDS[kind] only.
FIELD_TYPES: dict[str, type] = {
    "kind": str,
    #: The caption question (the backend's default when the job set none), generation prompt or edit
    #: instruction, as the model got it.
    "prompt": str,
    #: The seed the item ran with (its own, or the one derived from the job's seed and the item's id).
    "seed": int,
    "steps": int,
    "txt_cfg": float,
    "img_cfg": float,
    #: The output image's size in pixels.
    "width": int,
    "height": int,
    "max_new_tokens": int,
    "temperature": float,
    #: The cap on the pixels the model saw of a caption's image; empty where the model's own bound held.
    "max_pixels": int,
    "image_format": str,
    #: JPEG and WebP only.
    "quality": int,
    #: The weights as configured (local directory or hub id) and the hub revision pinned, if any.
    "model": str,
    "model_revision": str,
    "backend": str,
    #: ovis-batch's version.
    "version": str,
}

_MODEL = ("model", "model_revision", "backend", "version")
#: The fields of each kind, in the order exports add them as columns.
FIELDS: dict[str, tuple[str, ...]] = {
    JobKind.CAPTION.value: ("kind", "prompt", "seed", "max_new_tokens", "temperature", "max_pixels", *_MODEL),
    JobKind.GENERATE.value: (
        "kind",
        "prompt",
        "seed",
        "steps",
        "txt_cfg",
        "width",
        "height",
        "image_format",
        "quality",
        *_MODEL,
    ),
    JobKind.EDIT.value: (
        "kind",
        "prompt",
        "seed",
        "steps",
        "txt_cfg",
        "img_cfg",
        "width",
        "height",
        "image_format",
        "quality",
        *_MODEL,
    ),
}


def columns(kind: str) -> tuple[str, ...]:
    """The provenance columns an export of a `kind` job adds after its own (the prompt is already one)."""
    return tuple(name for name in FIELDS[kind] if name != "prompt")


def as_text(value: Any) -> str:
    """A field's value as image metadata holds it: numbers in their JSON spelling, text as it is."""
    return value if isinstance(value, str) else repr(value)
