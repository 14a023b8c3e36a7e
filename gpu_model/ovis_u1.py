"""The Ovis-U1-3B backend: captioning, text-to-image and editing with the official call flows.

This module holds the official prompts, defaults and limits and imports no torch: the model is loaded by
`gpu_model.ovis_u1_loading` and run by `gpu_model.ovis_u1_pipeline`, both imported by `load()`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from gpu_model.base import Backend, BackendInfo, BackendOptions
from gpu_model.compile_cache import compile_counters, describe_compiles
from gpu_model.errors import BackendError, BackendInvalidRequest, BackendLoadError
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest, Request
from gpu_model.startup import FirstUse, startup

if TYPE_CHECKING:
    from gpu_model.ovis_u1_pipeline import OvisU1Pipeline

logger = logging.getLogger(__name__)

# Prompts of the official scripts (test_img_to_txt.py, test_txt_to_img.py, test_img_edit.py).
#: Understanding: the question follows the image placeholder.
UNDERSTANDING_PREFIX = "<image>\n"
#: Text-to-image conditioning prompt; the user's prompt is appended as it is.
GENERATE_PREFIX = (
    "<image>\nDescribe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects:"
)
#: Unconditional prompt (on a blank image, or on the source image for the edit's no-text condition).
GENERIC_PROMPT = "<image>\nGenerate an image."
#: Editing: the stripped instruction follows the image placeholder.
EDIT_PREFIX = "<image>\n"
#: The blank image of the generation conditions.
BLANK_COLOR = (255, 255, 255)

#: Default caption question: the model's own wording for a detailed description (its text-to-image
#: conditioning prompt), so captions read like what the generator was trained to follow.
DEFAULT_CAPTION_PROMPT = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, and spatial "
    "relationships of the objects."
)
#: Detailed captions run 100-350 tokens; 512 leaves room and bounds a runaway greedy row, which holds its
#: whole micro-batch for every step it takes (the official 4096 would hold it eight times as long).
DEFAULT_CAPTION_MAX_NEW_TOKENS = 512

# Limits the backend validates against before any model work.
#: Largest max_new_tokens (the official understanding script's value).
MAX_CAPTION_NEW_TOKENS = 4096
#: A caption's max_pixels, passed to preprocess_inputs: the visual tokenizer resizes every image to between
#: 448x448 and 1792x1792 pixels (256 to 4096 visual tokens); a cap below the first would show the model images
#: smaller than its own preprocessing ever gives it.
MIN_CAPTION_MAX_PIXELS = 448 * 448
MAX_CAPTION_MAX_PIXELS = 1792 * 1792
#: generate_img truncates height and width to multiples of 16 (VAE 8x and 2x2 latent patches).
GENERATE_SIZE_MULTIPLE = 16
MIN_GENERATE_SIDE = 64
MAX_GENERATE_SIDE = 2048
#: Edit outputs are smart_resize(h, w, factor=32) of the input: sides multiples of 32, about 1 MP at most.
EDIT_SIZE_MULTIPLE = 32
#: smart_resize refuses inputs more elongated than this.
MAX_EDIT_ASPECT_RATIO = 200
MAX_STEPS = 200
MAX_CFG = 20.0
#: torch.Generator accepts seeds up to 2**64 - 1.
MAX_SEED = 2**64 - 1

#: bfloat16 is the official one; float32 serves exact comparisons in tests.
SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MAX_BATCH: dict[str, int] = {"caption": 64, "generate": 1, "edit": 1}
#: Captions per micro-batch on CUDA, where the fast greedy decoder makes large batches pay (see
#: bench/gpu_throughput.py, which times caption batches side by side with `--caption-batches`).
FAST_CAPTION_BATCH = 256
DEFAULTS: dict[str, dict[str, Any]] = {
    "caption": {
        "prompt": DEFAULT_CAPTION_PROMPT,
        "max_new_tokens": DEFAULT_CAPTION_MAX_NEW_TOKENS,
        "temperature": 0.0,
    },
    "generate": {"width": 1024, "height": 1024, "steps": 50, "txt_cfg": 5.0},
    "edit": {"steps": 50, "img_cfg": 1.5, "txt_cfg": 6.0},
}

R = TypeVar("R")


class InvalidRequest(BackendInvalidRequest):
    """A request outside Ovis-U1's limits."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidRequest(message)


def _check_common(steps: int, seed: int, cfgs: dict[str, float]) -> None:
    _check(1 <= steps <= MAX_STEPS, f"steps must be within 1..{MAX_STEPS}, got {steps}")
    _check(0 <= seed <= MAX_SEED, f"seed must be within 0..2**64-1, got {seed}")
    for name, value in cfgs.items():
        _check(0.0 <= value <= MAX_CFG, f"{name} must be within 0..{MAX_CFG}, got {value}")


def validate_caption(request: CaptionRequest) -> None:
    """Raise InvalidRequest unless the request fits the model's limits."""
    _check(bool(request.prompt.strip()), "the caption prompt is empty")
    _check(
        1 <= request.max_new_tokens <= MAX_CAPTION_NEW_TOKENS,
        f"max_new_tokens must be within 1..{MAX_CAPTION_NEW_TOKENS}, got {request.max_new_tokens}",
    )
    _check(request.temperature >= 0, f"temperature must be >= 0, got {request.temperature}")
    _check(0 <= request.seed <= MAX_SEED, f"seed must be within 0..2**64-1, got {request.seed}")
    cap, low, high = request.max_pixels, MIN_CAPTION_MAX_PIXELS, MAX_CAPTION_MAX_PIXELS
    _check(cap is None or low <= cap <= high, f"max_pixels must be within {low}..{high}, got {cap}")


def validate_generate(request: GenerateRequest) -> None:
    """Raise InvalidRequest unless the request fits the model's limits."""
    for name, side in (("width", request.width), ("height", request.height)):
        _check(
            MIN_GENERATE_SIDE <= side <= MAX_GENERATE_SIDE and side % GENERATE_SIZE_MULTIPLE == 0,
            f"{name} must be a multiple of {GENERATE_SIZE_MULTIPLE} within "
            f"{MIN_GENERATE_SIDE}..{MAX_GENERATE_SIDE}, got {side}",
        )
    _check(bool(request.prompt.strip()), "the prompt is empty")
    _check_common(request.steps, request.seed, {"txt_cfg": request.txt_cfg})


def validate_edit(request: EditRequest) -> None:
    """Raise InvalidRequest unless the request fits the model's limits."""
    width, height = request.image.size
    _check(width > 0 and height > 0, "the input image is empty")
    _check(
        max(width, height) / min(width, height) <= MAX_EDIT_ASPECT_RATIO,
        f"the input image is {width}x{height}: aspect ratio above {MAX_EDIT_ASPECT_RATIO}",
    )
    _check(bool(request.instruction.strip()), "the instruction is empty")
    _check_common(request.steps, request.seed, {"img_cfg": request.img_cfg, "txt_cfg": request.txt_cfg})


def resolve_max_batch(overrides: dict[str, int]) -> dict[str, int]:
    """The backend's largest micro-batch per kind, with the worker's overrides applied."""
    unknown = sorted(set(overrides) - set(DEFAULT_MAX_BATCH))
    if unknown:
        raise BackendLoadError(
            f"max_batch overrides for unknown kinds {unknown}; known: caption, generate, edit"
        )
    bad = {kind: n for kind, n in overrides.items() if not isinstance(n, int) or n < 1}
    if bad:
        raise BackendLoadError(f"max_batch overrides must be positive integers, got {bad}")
    return {**DEFAULT_MAX_BATCH, **overrides}


class OvisU1Backend(Backend):
    """Ovis-U1-3B from a local directory or the Hugging Face cache, with its own remote code, bf16."""

    name = "ovis-u1"

    def __init__(self, options: BackendOptions | None = None, *, dtype: str = "bfloat16") -> None:
        super().__init__(options)
        #: "bfloat16" as the official scripts; tests compare greedy tokens in "float32".
        self.dtype = dtype
        self.info: BackendInfo | None = None
        self._pipeline: OvisU1Pipeline | None = None
        #: The generator compiles and captures its passes on its first call at each image size (CUDA).
        self.first_use = FirstUse("the generator", enabled=False)

    @property
    def model(self) -> Any:
        """The loaded remote-code model (None before load)."""
        return self._pipeline.model if self._pipeline is not None else None

    def load(self) -> BackendInfo:
        """Resolve and check the weights, then load them onto the device; see ovis_u1_loading."""
        from gpu_model import ovis_u1_loading as loading

        if self.dtype not in SUPPORTED_DTYPES:
            raise BackendLoadError(f"dtype {self.dtype!r} is not one of {', '.join(SUPPORTED_DTYPES)}")
        max_batch = resolve_max_batch(dict(self.options.max_batch))
        device = loading.resolve_device(self.options.device)
        model_path = self.options.model_path or loading.DEFAULT_MODEL_ID
        startup.phase(logger, "resolving the model directory of %s", model_path)
        directory = loading.resolve_model_dir(model_path, self.options.revision)
        model_type = loading.check_model_dir(directory, model_path, self.options.revision)
        loading.check_transformers_compat(directory, model_type)
        loading.check_remote_code_packages(directory, device)
        if device == "cpu" and model_type == loading.REAL_MODEL_TYPE:
            logger.warning(
                "Ovis-U1-3B is running on the CPU: expect minutes per caption and far more per image; "
                "on a GPU host install the GPU worker (%s)",
                loading.GPU_INSTALL,
            )
        startup.phase(
            logger,
            "loading the weights of %s (%s) from %s onto %s in %s",
            model_path,
            model_type,
            directory,
            device,
            self.dtype,
        )
        model = loading.load_model(directory, device=device, dtype_name=self.dtype)
        startup.phase(logger, "weights on %s; setting up the fast paths", device)

        from gpu_model.ovis_u1_pipeline import OvisU1Pipeline

        if device.startswith("cuda") and "caption" not in self.options.max_batch:
            max_batch["caption"] = FAST_CAPTION_BATCH
        self._pipeline = OvisU1Pipeline(
            model, device=device, dtype_name=self.dtype, max_batch=max_batch["caption"]
        )
        self.first_use.enabled = self._pipeline.dit_graphs is not None or self._pipeline.compiled_blocks > 0
        self.info = BackendInfo(
            name=self.name, device=device, max_batch=max_batch, defaults=copy.deepcopy(DEFAULTS)
        )
        return self.info

    def warmup(self, kinds: Collection[str] | None = None) -> None:
        """A tiny caption when the worker takes captions: lazy CUDA initialisation, the compile of the fused
        norms (every prompt length) and a decode graph. Nothing for images: the generator compiles and
        captures its passes on first use at each real size (logged then), where a warm-up at a size of its
        own would compile and capture shapes that work never reuses."""
        if kinds is None or "caption" in kinds:
            startup.phase(logger, "warming up captions (lazy initialisation; fused norms compile on CUDA)")
            square = Image.new("RGB", (64, 64), (128, 128, 128))
            before = compile_counters()
            self.caption([CaptionRequest(image=square, prompt="What is it?", max_new_tokens=2)])
            startup.phase(logger, "captions warm (%s)", describe_compiles(before, compile_counters()))
        images = sorted({"generate", "edit"} & set(DEFAULT_MAX_BATCH if kinds is None else kinds))
        if images and self.first_use.enabled:
            startup.phase(
                logger, "%s: the generator compiles at the first item of each size", " and ".join(images)
            )

    def prepare(self, request: Request) -> Request:
        """A request's host work ahead of the model, on an I/O thread: a caption's prompt tokenized and image
        preprocessed; a generate or edit request's images (the blank or resized source, its VAE pixels) and
        the inputs of its conditions. Unchanged where that fails: the batch does it and reports the error."""
        if self._pipeline is None:
            return request
        if isinstance(request, CaptionRequest):
            return self._pipeline.prepare_caption(request)
        try:  # nothing is made for a request the batch will refuse (a blank 100,000 px wide, say)
            if isinstance(request, GenerateRequest):
                validate_generate(request)
            else:
                validate_edit(request)
        except InvalidRequest:
            return request
        return self._pipeline.prepare_image(request)

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """Greedy rows in one generate() call, sampled rows one by one with their own seed."""
        return self._run(requests, validate_caption, lambda p: p.caption)

    def generate(self, requests: list[GenerateRequest]) -> list[Image.Image]:
        """One item at a time, each with its own seed."""
        return self._run(requests, validate_generate, lambda p: p.generate, lambda r: f"{r.width}x{r.height}")

    def edit(self, requests: list[EditRequest]) -> list[Image.Image]:
        """One item at a time, each with its own seed."""
        return self._run(requests, validate_edit, lambda p: p.edit, self._edit_shape)

    def _edit_shape(self, request: EditRequest) -> str:
        assert self._pipeline is not None
        height, width = self._pipeline.edit_size(*request.image.size)
        return f"{width}x{height} edits"

    def _run(
        self,
        requests: Sequence[Any],
        validate: Callable[[Any], None],
        method: Callable[[OvisU1Pipeline], Callable[[list[Any]], list[R]]],
        shape: Callable[[Any], str] | None = None,
    ) -> list[R]:
        if self._pipeline is None:
            raise BackendError("the ovis-u1 backend is not loaded: call load() first")
        if not requests:
            return []
        for request in requests:
            validate(request)
        shapes = [shape(r) for r in requests] if shape is not None and self.first_use.enabled else []
        with self.first_use(shapes):
            results = method(self._pipeline)(list(requests))
        if len(results) != len(requests):
            raise BackendError(f"the model returned {len(results)} results for {len(requests)} requests")
        return results
