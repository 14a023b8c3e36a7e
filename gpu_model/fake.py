"""A torch-free backend for orchestration tests and benchmarks: deterministic outputs, simulated time."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

from PIL import Image

from gpu_model.base import Backend, BackendInfo
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _image_digest(image: Image.Image) -> str:
    # A cheap fingerprint of the pixels: 8x8 of them sampled across the image; equal inputs, equal outputs.
    sample = image.resize((8, 8), Image.Resampling.NEAREST)
    return hashlib.sha256(sample.tobytes()).hexdigest()[:16]


class FakeBackend(Backend):
    """Outputs derived from the inputs by hashing: the same request always gives the same result."""

    name = "fake"

    def load(self) -> BackendInfo:
        """Nothing to load."""
        max_batch = {"caption": 64, "generate": 16, "edit": 16, **self.options.max_batch}
        return BackendInfo(
            name=self.name,
            device="cpu",
            max_batch=max_batch,
            defaults={
                "caption": {"prompt": "Describe this image in detail.", "max_new_tokens": 32},
                "generate": {"width": 64, "height": 64, "steps": 4, "txt_cfg": 5.0},
                "edit": {"steps": 4, "img_cfg": 1.5, "txt_cfg": 6.0},
            },
        )

    def _simulate(self, texts: list[str]) -> None:
        marker = self.options.simulated_crash_marker
        if marker and any(marker in text for text in texts):
            # Fault injection for tests: die the way a segfault or the OOM killer ends a worker, mid-batch.
            os.kill(os.getpid(), signal.SIGKILL)
        hang = self.options.simulated_hang_marker
        if hang and any(hang in text for text in texts):
            threading.Event().wait()  # a call that never returns: only the worker's watchdog ends it
        seconds = (
            self.options.simulated_ms_per_batch + self.options.simulated_ms_per_item * len(texts)
        ) / 1000.0
        if seconds > 0:
            time.sleep(seconds)

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """A caption naming the image's fingerprint and the prompt, cut to max_new_tokens words; `max_pixels`
        is accepted and has no effect (no model sees the image)."""
        self._simulate([r.prompt for r in requests])
        captions = []
        for r in requests:
            words = (
                f"image {_image_digest(r.image)} {r.image.width}x{r.image.height} asked {r.prompt}".split()
            )
            captions.append(" ".join(words[: r.max_new_tokens]))
        return captions

    def _solid(self, width: int, height: int, *parts: object) -> Image.Image:
        return Image.new("RGB", (width, height), tuple(_digest(*parts)[:3]))

    def generate(self, requests: list[GenerateRequest]) -> list[Image.Image]:
        """A solid image whose colour derives from the prompt and seed."""
        self._simulate([r.prompt for r in requests])
        return [self._solid(r.width, r.height, r.prompt, r.seed, r.steps, r.txt_cfg) for r in requests]

    def edit(self, requests: list[EditRequest]) -> list[Image.Image]:
        """The input with a tint derived from the instruction and seed, at the input's size."""
        self._simulate([r.instruction for r in requests])
        results = []
        for r in requests:
            tint = self._solid(r.image.width, r.image.height, r.instruction, r.seed, r.img_cfg, r.txt_cfg)
            results.append(Image.blend(r.image.convert("RGB"), tint, 0.5))
        return results
