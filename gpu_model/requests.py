"""What a backend is asked to do: one request per item, fully resolved by the caller."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class CaptionRequest:
    """Describe one image. `prompt` is the question put to the model."""

    image: Image.Image
    prompt: str
    max_new_tokens: int
    #: Greedy decoding when 0; sampling temperature otherwise.
    temperature: float = 0.0
    seed: int = 0
    #: The most pixels the model's own preprocessing resizes `image` to (fewer visual tokens: faster, less
    #: detail); None keeps the model's bound. Backends whose vision input has a fixed size say so.
    max_pixels: int | None = None
    #: The backend's own preprocessed form of `image` and `prompt` (see `Backend.prepare`), or None.
    prepared: object | None = None


@dataclass(frozen=True)
class GenerateRequest:
    """Render one image from a text prompt."""

    prompt: str
    width: int
    height: int
    steps: int
    seed: int
    txt_cfg: float
    #: The backend's own host work for this request, done ahead (see `Backend.prepare`), or None.
    prepared: object | None = None


@dataclass(frozen=True)
class EditRequest:
    """Edit one image following an instruction. The output size follows the input's aspect ratio."""

    image: Image.Image
    instruction: str
    steps: int
    seed: int
    img_cfg: float
    txt_cfg: float
    #: The backend's own host work for this request, done ahead (see `Backend.prepare`), or None.
    prepared: object | None = None


#: Any one request.
Request = CaptionRequest | GenerateRequest | EditRequest
