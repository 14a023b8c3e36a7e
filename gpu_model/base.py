"""The backend interface: load once, then run whole micro-batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest, Request


@dataclass(frozen=True)
class BackendOptions:
    """How to build a backend; filled from the worker's settings."""

    #: Local directory or hub model id (resolved through the local cache only).
    model_path: str | None = None
    #: Hub revision (commit or tag) to pin, since remote code runs on every worker.
    revision: str | None = None
    #: "auto" picks CUDA when present, else the CPU.
    device: str = "auto"
    #: Overrides of the backend's own largest micro-batch per kind.
    max_batch: dict[str, int] = field(default_factory=dict)
    #: Torch-free backend only: simulated model time per item and per batch, in milliseconds.
    simulated_ms_per_item: float = 0.0
    simulated_ms_per_batch: float = 0.0
    #: Torch-free backend only, fault injection for tests: a request whose text holds this kills the process.
    simulated_crash_marker: str = ""
    #: Torch-free backend only, fault injection for tests: a request whose text holds this never returns, as a
    #: model call stuck in a driver would.
    simulated_hang_marker: str = ""


@dataclass(frozen=True)
class BackendInfo:
    """What a loaded backend is and can take."""

    name: str
    device: str
    #: Largest micro-batch per job kind ("caption", "generate", "edit").
    max_batch: dict[str, int] = field(default_factory=dict)
    #: Defaults the backend applies where a job leaves a parameter unset, per kind.
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)


class Backend(ABC):
    """A model that captions, generates and edits in batches.

    A backend is created once per worker process and `load`ed before the worker consumes work.
    Every batch method returns exactly one result per request, in request order.
    """

    name: str = "backend"

    def __init__(self, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()

    @abstractmethod
    def load(self) -> BackendInfo:
        """Load weights onto the device; raise BackendLoadError with a fix the user can apply."""

    def warmup(self, kinds: Collection[str] | None = None) -> None:  # noqa: B027 - optional hook
        """Run what the first real batch of `kinds` (the job kinds this worker consumes; None: every kind)
        would otherwise pay for lazily, and only what later work reuses."""

    def prepare(self, request: Request) -> Request:
        """CPU work on one request that can run ahead of the model, on the worker's I/O threads (resizing,
        conversion to arrays, tokenizing): called from several threads at once, so it must be thread-safe,
        and it must not raise for a request the batch methods accept. Default: nothing to do."""
        return request

    @abstractmethod
    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        """Caption a micro-batch of images."""

    @abstractmethod
    def generate(self, requests: list[GenerateRequest]) -> list[Image.Image]:
        """Render a micro-batch of prompts."""

    @abstractmethod
    def edit(self, requests: list[EditRequest]) -> list[Image.Image]:
        """Edit a micro-batch of images."""
