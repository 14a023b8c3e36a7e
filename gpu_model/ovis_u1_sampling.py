"""Ovis-U1's image sampling in a loop of the project's over the visual generator's own parts: its DiT
backbone, VAE, schedule and source-encoding helper, with the official flow's math.

Why not the model's generate_img: its Euler loop makes each pass's text position ids on the host and copies
them to the device, and the backbone's timestep embedding copies a host-made frequency table to the device in
every pass. A copy from pageable host memory waits for the device to drain, so the host never runs ahead of
the GPU (2 to 3 such waits per pass), and a pass that waits cannot be captured in a CUDA graph:
fast_dit.GraphedCall refuses every pass shape and runs it plainly, after a wasted warm-up pass per new shape.
Here the position ids are made on the device once per item, and the timestep embedding's table, still made
on the host as the model makes it, is copied to the device once and reused (the same bytes), so that a pass
is one graph replay and the host queues the whole loop ahead of the GPU.

Everything else is computed as the official flow computes it: the same bf16 noise from the item's own
generator, the schedule from the model's own helper, the source latents from the model's own encoder helper
(sampling torch's global RNG, which the caller seeds), the passes in the same order, the guidance arithmetic
in the same dtypes and order, the VAE decode under the same float32 autocast, the same 8-bit conversion.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from gpu_model.shaped_sampling import image_ids, noise, unpack

#: What the project's loop uses of the visual generator; a generator without one of them is left to the
#: model's own generate_img.
REQUIRED_PARTS = ("backbone", "vae", "get_schedule", "compute_vae_encodings")
#: The backbone module's timestep embedding, looked up by the backbone's forward at each call.
TIMESTEP_EMBEDDING = "timestep_embedding"

_samplers: weakref.WeakKeyDictionary[Any, YakSampler] = weakref.WeakKeyDictionary()


def sampler_for(model: Any) -> YakSampler | None:
    """The sampler of a loaded model's visual generator (one per generator), or None when the generator
    lacks a part the project's loop needs."""
    generator = getattr(model, "visual_generator", None)
    if generator is None or not all(hasattr(generator, part) for part in REQUIRED_PARTS):
        return None
    sampler = _samplers.get(generator)
    if sampler is None:
        sampler = _samplers[generator] = YakSampler(generator)
    return sampler


class HostCopies(TorchFunctionMode):
    """`tensor.to(device)` of a host tensor served from a device copy made the first time those contents
    were copied: later calls copy on the device (a graph can capture that) and leave the host unblocked.
    For small constant tables: the copies are kept for good, since a captured graph reads them where they
    are."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: dict[tuple[Any, ...], torch.Tensor] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.to and len(args) == 2 and not kwargs:
            source, target = args
            if isinstance(target, str | torch.device) and source.device.type == "cpu":
                device = torch.device(target)
                if device.type != "cpu":
                    contents = source.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                    key = (device, source.dtype, tuple(source.shape), contents)
                    if key not in self.copies:
                        self.copies[key] = func(*args)
                    return self.copies[key].clone()
        return func(*args, **kwargs)


def keeping_host_copies(fn: Callable[..., Any], copies: HostCopies) -> Callable[..., Any]:
    """`fn` with its host-to-device copies served by `copies`."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with copies:
            return fn(*args, **kwargs)

    return call


class YakSampler:
    """Text-to-image and editing over an Ovis-U1 visual generator ("Yak"), one item at a time."""

    def __init__(self, generator: Any) -> None:
        # A weak reference: the samplers are kept per generator, and a value that held its key would keep
        # every model ever loaded alive.
        self._generator = weakref.ref(generator)
        #: The device copies of the tables the backbone's timestep embedding makes on the host.
        self._host_copies = HostCopies()

    @property
    def generator(self) -> Any:
        """The visual generator sampled from."""
        generator = self._generator()
        if generator is None:
            raise RuntimeError("the visual generator of this sampler is gone")
        return generator

    def sample(
        self,
        cond: dict[str, Any],
        no_both: dict[str, Any],
        no_txt: dict[str, Any] | None,
        *,
        height: int,
        width: int,
        steps: int,
        seed: int,
        img_cfg: float,
        txt_cfg: float,
    ) -> Image.Image:
        """One image: text-to-image when `no_txt` is None (2 passes a step), else an edit of the source in
        `cond["vae_pixel_values"]` (3 passes a step). `height` and `width` are rounded down to multiples of
        16, as the official flow does."""
        generator = self.generator
        backbone = generator.backbone
        device = next(backbone.parameters()).device
        height, width = 16 * (height // 16), 16 * (width // 16)
        x = noise(seed, height, width, channels=generator.vae.config.latent_channels, device=device)
        positions = image_ids(height, width, frame=0, device=device).unsqueeze(0)

        def text(condition: dict[str, Any]) -> dict[str, Any]:
            txt = condition["txt"]
            zeros = torch.zeros(txt.shape[0], txt.shape[1], 3, device=txt.device)
            return {"img_ids": positions, "txt": txt, "txt_ids": zeros}

        if no_txt is None:
            passes = [text(cond), text(no_both)]
            combine = functools.partial(_text_guidance, txt_cfg)
        else:
            source, source_ids = generator.compute_vae_encodings(
                pixel_values=cond["vae_pixel_values"], with_ids=True, time=1.0
            )
            with_source = {"cond_img": source, "cond_img_ids": source_ids.to(device)}
            passes = [{**text(cond), **with_source}, text(no_both), {**text(no_txt), **with_source}]
            combine = functools.partial(_edit_guidance, img_cfg, txt_cfg)
        config = generator.config
        times = generator.get_schedule(
            steps,
            x.shape[1],
            shift=config.timestep_shift,
            base_shift=config.base_shift,
            max_shift=config.max_shift,
        )
        with self._timestep_tables_kept():
            for now, after in itertools.pairwise(times):
                t = torch.full((x.shape[0],), now, dtype=x.dtype, device=x.device)
                velocities = [backbone(img=x, timesteps=t, **kwargs) for kwargs in passes]
                x = x + (after - now) * combine(velocities)
        return self._decode(x, height, width)

    def _decode(self, x: torch.Tensor, height: int, width: int) -> Image.Image:
        vae = self.generator.vae
        latents = unpack(x.float(), height, width)
        # Under a float32 autocast, as the official flow: on CUDA the bf16 VAE computes in float32 (on the
        # CPU the autocast refuses float32 and switches itself, and any outer autocast, off).
        with torch.autocast(device_type=latents.device.type, dtype=torch.float32):
            scaling = getattr(vae.config, "scaling_factor", None)
            if scaling is not None:
                latents = latents / scaling
            shift = getattr(vae.config, "shift_factor", None)
            if shift is not None:
                latents = latents + shift
            pixels = vae.decode(latents, return_dict=False)[0]
        pixels = pixels.clamp(-1, 1).permute(0, 2, 3, 1)
        # Converted to 8 bits on the device (truncation, as on the host), so a quarter of the bytes cross.
        array = (127.5 * (pixels + 1.0)).byte().cpu().numpy()
        return Image.fromarray(array[0])

    @contextlib.contextmanager
    def _timestep_tables_kept(self) -> Iterator[None]:
        """The backbone's timestep embedding (looked up in its module at each pass) with its host-made
        frequency table copied to the device once, not in every pass."""
        module = sys.modules.get(type(self.generator.backbone).__module__)
        embedding = getattr(module, TIMESTEP_EMBEDDING, None)
        if not callable(embedding):
            yield
            return
        setattr(module, TIMESTEP_EMBEDDING, keeping_host_copies(embedding, self._host_copies))
        try:
            yield
        finally:
            setattr(module, TIMESTEP_EMBEDDING, embedding)


def _text_guidance(txt_cfg: float, velocities: list[torch.Tensor]) -> torch.Tensor:
    cond, uncond = velocities
    return uncond + txt_cfg * (cond - uncond)


def _edit_guidance(img_cfg: float, txt_cfg: float, velocities: list[torch.Tensor]) -> torch.Tensor:
    cond, no_both, no_txt = velocities
    guided = no_both + img_cfg * (no_txt - no_both)
    return guided + txt_cfg * (cond - no_txt)
