"""Faults for worker processes under test, put in place when Python starts with this folder on PYTHONPATH.

An input whose bytes start with a marker below raises that exception while it is decoded, the way an input no
check foresaw would; the torch-free backend's `prepare` raises ValueError for an image `REFUSED_WIDTH` pixels
wide, against its contract. Patched before `workers.prepare` imports them, so a real worker runs into them.
"""

from __future__ import annotations

from typing import Any

from gpu_model import fake
from workers import images

#: First bytes of an input -> what decoding it raises.
FAULTS: dict[bytes, type[BaseException]] = {b"MEMORY": MemoryError, b"RECURSE": RecursionError}
REFUSED_WIDTH = 17

_decode_image = images.decode_image
_prepare = fake.FakeBackend.prepare


def _faulty_decode(data: bytes, **limits: int) -> Any:
    for marker, error in FAULTS.items():
        if data.startswith(marker):
            raise error()
    return _decode_image(data, **limits)


def _faulty_prepare(self: fake.FakeBackend, request: Any) -> Any:
    image = getattr(request, "image", None)
    if image is not None and image.width == REFUSED_WIDTH:
        raise ValueError(f"cannot prepare an image {REFUSED_WIDTH} pixels wide")
    return _prepare(self, request)


images.decode_image = _faulty_decode
fake.FakeBackend.prepare = _faulty_prepare  # type: ignore[method-assign]
