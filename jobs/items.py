"""An item as a source yields it, and the parameters an item may set for itself.

Sources make these and submission checks and stores them; both import this module, neither imports the
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.lifecycle import JobKind

#: Per-item parameters a manifest may set, per kind (the rest are job-wide).
ITEM_PARAMS: dict[JobKind, frozenset[str]] = {
    JobKind.CAPTION: frozenset({"max_new_tokens", "max_pixels", "seed"}),
    JobKind.GENERATE: frozenset({"seed", "width", "height", "steps", "txt_cfg", "image_format", "quality"}),
    JobKind.EDIT: frozenset({"seed", "steps", "img_cfg", "txt_cfg", "image_format", "quality"}),
}


@dataclass(slots=True)
class ItemSpec:
    """One item as a source yields it (slots: a million of these are made per million items)."""

    key: str
    #: Input image URL (caption, edit).
    source: str = ""
    #: Caption question, generation prompt or edit instruction.
    text: str = ""
    params: dict[str, Any] | None = field(default=None)
