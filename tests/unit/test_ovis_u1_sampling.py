"""The project's image sampling loop (gpu_model/ovis_u1_sampling.py) against the model's own generate_img.

At batch 1 with the same seed, text-to-image and edits through the `ovis-u1` backend give exactly the image
the official flow gives (float32 weights on the CPU): on the stand-in model, and on a tiny build of the
official remote code where that code has been fetched into .remote/ovis-u1 and torchvision imports.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from gpu_model import BackendOptions, EditRequest, GenerateRequest
from gpu_model import ovis_u1_sampling as sampling
from gpu_model.ovis_u1 import OvisU1Backend
from tests.fixtures.ovis_u1_real_code import built, needs_remote_code, real_code_backend
from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache
from tests.helpers import sample_photo

REQUESTS: list[Any] = [
    GenerateRequest("a red fox in the snow", 128, 96, 3, seed=1, txt_cfg=5.0),
    EditRequest(sample_photo(size=160), "make it blue", 3, seed=2, img_cfg=1.5, txt_cfg=6.0),
]


def _run(backend: OvisU1Backend, request: Any) -> Image.Image:
    if isinstance(request, GenerateRequest):
        return backend.generate([request])[0]
    return backend.edit([request])[0]


def _through(backend: OvisU1Backend, request: Any, *, official: bool) -> Image.Image:
    """The item through the model's generate_img (`official`: the backend's path for a generator that the
    project's loop cannot drive) or through the project's loop; checked to take that path."""
    model = backend.model
    used: list[int] = []
    generate_img = model.generate_img

    def counted(*args: Any, **kwargs: Any) -> Any:
        used.append(1)
        return generate_img(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "generate_img", counted)
        if official:
            patch.setattr(sampling, "sampler_for", lambda model: None)
        image = _run(backend, request)
    assert used == ([1] if official else [])
    return image


def _assert_same_images(backend: OvisU1Backend) -> None:
    for request in REQUESTS:
        official = _through(backend, request, official=True)
        project = _through(backend, request, official=False)
        assert project.size == official.size and project.mode == official.mode == "RGB"
        pixels = np.asarray(project)
        assert pixels.std() > 0, "a uniform image would prove nothing"
        assert np.array_equal(pixels, np.asarray(official)), type(request).__name__
        other_seed = _run(backend, replace(request, seed=request.seed + 1))
        assert not np.array_equal(np.asarray(other_seed), pixels)


# -- the stand-in model ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> OvisU1Backend:
    directory = build_standin(tmp_path_factory.mktemp("ovis-u1") / "Ovis-U1-standin")
    backend = OvisU1Backend(BackendOptions(model_path=str(directory), device="cpu"), dtype="float32")
    with isolated_modules_cache(tmp_path_factory.mktemp("hf-modules")):
        backend.load()
    return backend


def test_the_project_loop_gives_the_official_images_on_the_standin(standin: OvisU1Backend) -> None:
    _assert_same_images(standin)


def test_a_generator_without_the_parts_the_loop_needs_is_left_to_generate_img(standin: OvisU1Backend) -> None:
    assert sampling.sampler_for(standin.model) is sampling.sampler_for(standin.model)  # one per generator
    assert sampling.sampler_for(object()) is None

    class Partial(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2)
            self.vae = torch.nn.Linear(2, 2)  # no get_schedule nor compute_vae_encodings

    class Model:
        visual_generator = Partial()

    assert sampling.sampler_for(Model()) is None


def test_a_sampler_does_not_keep_its_model_alive() -> None:
    class Generator(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Linear(2, 2)
            self.vae = torch.nn.Linear(2, 2)

        def get_schedule(self) -> None: ...

        def compute_vae_encodings(self) -> None: ...

    class Model:
        visual_generator = Generator()

    sampler = sampling.sampler_for(Model())
    assert sampler is not None
    generator = weakref.ref(Model.visual_generator)
    del Model
    gc.collect()
    assert generator() is None
    with pytest.raises(RuntimeError, match="gone"):
        _ = sampler.generator


# -- host-made tables copied to the device once ------------------------------------------------------------
class CopiesToTheDevice(TorchDispatchMode):
    """Counts the copies of host tensors to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._to_copy.default and args[0].device.type == "cpu":
            self.count += (kwargs or {}).get("device", args[0].device).type != "cpu"
        return func(*args, **(kwargs or {}))


def _embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    """A timestep embedding that makes its table on the host in every call, as the model's does."""
    table = torch.exp(-torch.arange(width, dtype=torch.float32) / width)
    return t[:, None].float() * table.to(t.device)[None]


def test_a_host_made_table_is_copied_to_the_device_once() -> None:
    copies = sampling.HostCopies()
    embedding = sampling.keeping_host_copies(_embedding, copies)
    t = torch.ones(3, device="meta")
    counted = CopiesToTheDevice()
    with counted:
        outputs = [embedding(t, 4), embedding(t, 4), embedding(t, 8)]
    assert counted.count == 2  # one per distinct table
    assert len(copies.copies) == 2
    assert [tuple(out.shape) for out in outputs] == [(3, 4), (3, 4), (3, 8)]
    assert all(out.device.type == "meta" for out in outputs)

    with counted:
        plain = [_embedding(t, 4), _embedding(t, 4)]
    assert counted.count == 4 and len(plain) == 2  # without it: a copy in every call


def test_host_copies_leave_other_conversions_alone() -> None:
    copies = sampling.HostCopies()
    host = torch.arange(3.0)
    with copies:
        assert host.to("cpu") is host
        assert host.to(torch.float64).dtype == torch.float64
        assert host.to("meta", non_blocking=True).device.type == "meta"
    assert copies.copies == {}


# -- a tiny build of the official remote code ------------------------------------------------------------
@pytest.fixture(scope="module")
def real_code_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with built(tmp_path_factory.mktemp("ovis-u1-tiny") / "model") as directory:
        yield directory


@needs_remote_code
def test_the_project_loop_gives_the_official_images_on_the_real_code(
    real_code_dir: Path, tmp_path: Path
) -> None:
    with real_code_backend(real_code_dir, tmp_path / "modules", "cpu", "float32") as backend:
        assert type(backend.model.visual_generator).__name__ == "YakModel"
        _assert_same_images(backend)


@pytest.mark.cuda
@needs_remote_code
def test_on_a_gpu_the_real_code_s_passes_are_replayed_from_cuda_graphs(
    real_code_dir: Path, tmp_path: Path
) -> None:
    with real_code_backend(real_code_dir, tmp_path / "modules", "cuda", "bfloat16") as backend:
        pipeline = backend._pipeline
        assert pipeline is not None and pipeline.dit_graphs is not None
        graphs = pipeline.dit_graphs

        def replays(official: bool, request: Any) -> tuple[np.ndarray, int]:
            before = graphs.replays
            image = _through(backend, request, official=official)
            return np.asarray(image, dtype=np.int16), graphs.replays - before

        for request in REQUESTS:
            for official in (True, False):  # the first runs compile, capture and warm up
                replays(official, request)
            official_pixels, official_replays = replays(True, request)
            project_pixels, project_replays = replays(False, request)
            # The model's own loop syncs in every pass, so none of its pass shapes is captured (the two loops
            # name the backbone's arguments in another order: their passes never share a graph).
            assert official_replays == 0
            assert project_replays == request.steps * (2 if isinstance(request, GenerateRequest) else 3)
            # the same kernels; cuBLAS may pick another algorithm inside a capture: bf16 rounding apart
            assert int(np.abs(project_pixels - official_pixels).max()) <= 8
