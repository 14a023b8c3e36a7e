"""Model backends behind one batch-first interface; heavy imports live inside the implementations."""

from gpu_model.base import Backend, BackendInfo, BackendOptions
from gpu_model.errors import BackendError, BackendInvalidRequest, BackendLoadError, BackendOutOfMemory
from gpu_model.registry import BACKENDS, create_backend
from gpu_model.requests import CaptionRequest, EditRequest, GenerateRequest

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "BackendInfo",
    "BackendInvalidRequest",
    "BackendLoadError",
    "BackendOptions",
    "BackendOutOfMemory",
    "CaptionRequest",
    "EditRequest",
    "GenerateRequest",
    "create_backend",
]
