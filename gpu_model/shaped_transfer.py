"""Host-side transfers of the `ovis-u1-shaped` backend: images copied back without a wait, micro-batches of
images copied up through one reused pinned buffer, and host tensors sent to the GPU without a sync."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class HostImage:
    """An image on its way to host memory: the copy is queued behind the GPU work that makes it, and waited
    for only when the image is wanted (so the host can queue the next item meanwhile)."""

    def __init__(self, pixels: torch.Tensor) -> None:
        """`pixels`: [height, width, 3] uint8 on any device."""
        self._ready: torch.cuda.Event | None = None
        if pixels.is_cuda:
            self._host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
            self._host.copy_(pixels, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = pixels.contiguous()

    def image(self) -> Image.Image:
        """The image, once its copy has landed."""
        if self._ready is not None:
            self._ready.synchronize()
        return Image.fromarray(self._host.numpy())


class PinnedStaging:
    """A pinned host buffer that micro-batches of images are stacked into and copied to the GPU from.

    Stacking a caption micro-batch (512 images, ~300 MB) into fresh memory page-faults all of it every time,
    on the model's thread, while the worker's I/O threads decode beside it (the model's share of each chunk
    in bench/gpu_throughput.py's system run shows it).
    The buffer is faulted in once, reused (after the copy out of it has landed) and grows to the largest
    micro-batch seen.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def upload(self, arrays: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """The arrays (all of one shape) as one batch on `device`."""
        shape = (len(arrays), *arrays[0].shape)
        buffer = self._buffer
        if buffer is None or buffer.shape[1:] != shape[1:] or buffer.shape[0] < shape[0]:
            self._buffer = None
            buffer = self._buffer = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        elif self._copied is not None:
            self._copied.synchronize()
        host = buffer[: len(arrays)]
        np.stack(arrays, out=host.numpy())
        batch = host.to(device, non_blocking=True)
        self._copied = torch.cuda.Event()
        self._copied.record()
        return batch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory without waiting for the queued work (a plain
    copy would wait for everything queued before it)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
