"""Generation conditions from the model's own parts (gpu_model/ovis_u1_conditions.py) against the model's
generate_condition, and generate and edit requests prepared ahead on the I/O threads.

The conditions are the same tensors as generate_condition's (dtype and values) in float32 and bf16, without
its emptying of the CUDA cache nor its pass through the LM head; the images are those of the official flow
(generate_condition + generate_img) at batch 1; a prepared request gives the image an unprepared one gives.
On the stand-in model, and on a tiny build of the official code where that code and torchvision are there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gpu_model import BackendOptions, EditRequest, GenerateRequest
from gpu_model import ovis_u1_conditions as conditions
from gpu_model import ovis_u1_sampling as sampling
from gpu_model.ovis_u1 import OvisU1Backend
from tests.fixtures.ovis_u1_real_code import built, needs_remote_code, real_code_backend
from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache
from tests.helpers import sample_photo

GENERATE = GenerateRequest("a red fox in the snow", 128, 96, 3, seed=1, txt_cfg=5.0)
EDIT = EditRequest(sample_photo(size=160), "  make it blue ", 3, seed=2, img_cfg=1.5, txt_cfg=6.0)
REQUESTS: list[Any] = [GENERATE, EDIT]


def _run(backend: OvisU1Backend, request: Any) -> Image.Image:
    if isinstance(request, GenerateRequest):
        return backend.generate([request])[0]
    return backend.edit([request])[0]


@contextlib.contextmanager
def watched(backend: OvisU1Backend, *, official: bool) -> Iterator[dict[str, int]]:
    """The backend's path (`official`: the model's generate_condition and generate_img, as the backend runs a
    model that lacks the parts its own paths need), with what the model is asked for counted: its
    generate_condition and generate_img, emptyings of the CUDA cache, passes through the LLM's head."""
    model = backend.model
    counts = {"generate_condition": 0, "generate_img": 0, "empty_cache": 0, "lm_head": 0}

    def counted(name: str, fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return call

    with pytest.MonkeyPatch.context() as patch:
        for name in ("generate_condition", "generate_img"):
            patch.setattr(model, name, counted(name, getattr(model, name)))
        patch.setattr(torch.cuda, "empty_cache", counted("empty_cache", torch.cuda.empty_cache))
        if official:
            patch.setattr(conditions, "condition_parts", lambda model: None)
            patch.setattr(sampling, "sampler_for", lambda model: None)
        head = model.llm.get_output_embeddings().register_forward_hook(
            lambda *args: counts.__setitem__("lm_head", counts["lm_head"] + 1)
        )
        try:
            yield counts
        finally:
            head.remove()


def _conditions(backend: OvisU1Backend, request: Any) -> list[dict[str, Any]]:
    """The request's conditions as the backend computes them: the unconditional one, then an edit's no-text
    one, then the full one."""
    pipeline = backend._pipeline
    assert pipeline is not None
    inputs = conditions.image_inputs(backend.model, request)
    kwargs = pipeline._image_kwargs(inputs.width, inputs.height, request.steps, request.seed, 1.5, 5.0)
    parts = [conditions.unconditional_inputs(backend.model, inputs.width, inputs.height), inputs.no_txt]
    with torch.inference_mode():
        return [pipeline._condition(part, kwargs) for part in [*parts, inputs.cond] if part is not None]


def _assert_equal_conditions(backend: OvisU1Backend, dtype: torch.dtype) -> None:
    for request in REQUESTS:
        with watched(backend, official=True) as official:
            expected = _conditions(backend, request)
        with watched(backend, official=False) as project:
            got = _conditions(backend, request)
        n = len(expected)
        assert n == (3 if isinstance(request, EditRequest) else 2)
        # The model's generate_condition empties the CUDA cache and computes logits in every call; the
        # project's computes neither, nor calls it.
        assert official == {"generate_condition": n, "generate_img": 0, "empty_cache": n, "lm_head": n}
        assert project == {"generate_condition": 0, "generate_img": 0, "empty_cache": 0, "lm_head": 0}
        hidden = backend.model.llm.config.hidden_size
        for mine, theirs in zip(got, expected, strict=True):
            assert set(mine) == set(theirs) == {"txt"}
            assert mine["txt"].dtype == theirs["txt"].dtype == dtype
            assert mine["txt"].shape[-1] == 2 * hidden
            assert torch.equal(mine["txt"], theirs["txt"])
        assert not torch.equal(got[-1]["txt"], got[0]["txt"][:, :1].expand_as(got[-1]["txt"]))


def _assert_official_images(backend: OvisU1Backend) -> None:
    for request in REQUESTS:
        with watched(backend, official=True) as official:
            expected = _run(backend, request)
        with watched(backend, official=False) as project:
            image = _run(backend, request)
        assert official["generate_img"] == 1 and official["generate_condition"] >= 1
        assert project["generate_img"] == project["generate_condition"] == 0
        pixels = np.asarray(image)
        assert image.size == expected.size and image.mode == expected.mode == "RGB"
        assert pixels.std() > 0, "a uniform image would prove nothing"
        assert np.array_equal(pixels, np.asarray(expected)), type(request).__name__


# -- the stand-in model ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("ovis-u1") / "Ovis-U1-standin")


def _standin(directory: Path, modules: Path, dtype: str) -> OvisU1Backend:
    backend = OvisU1Backend(BackendOptions(model_path=str(directory), device="cpu"), dtype=dtype)
    with isolated_modules_cache(modules):
        backend.load()
    return backend


@pytest.fixture(scope="module")
def standin(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OvisU1Backend:
    return _standin(standin_dir, tmp_path_factory.mktemp("hf-modules"), "float32")


@pytest.fixture(scope="module")
def standin_bf16(standin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> OvisU1Backend:
    return _standin(standin_dir, tmp_path_factory.mktemp("hf-modules"), "bfloat16")


def test_conditions_equal_generate_condition_s_on_the_standin(
    standin: OvisU1Backend, standin_bf16: OvisU1Backend
) -> None:
    _assert_equal_conditions(standin, torch.float32)
    _assert_equal_conditions(standin_bf16, torch.bfloat16)


def test_images_equal_the_official_flow_s_on_the_standin(standin: OvisU1Backend) -> None:
    _assert_official_images(standin)


def test_a_model_without_the_parts_is_left_to_generate_condition(standin: OvisU1Backend) -> None:
    model = standin.model
    assert conditions.condition_parts(model) is not None
    assert conditions.condition_parts(object()) is None

    class OtherMerge:
        """A merge with other keywords than the project passes."""

        llm = model.llm

        def merge_multimodal(self, input_ids: Any, attention_mask: Any) -> Any: ...

    class HeadOnly:
        """An LLM whose base model is itself."""

        merge_multimodal = model.merge_multimodal
        llm = torch.nn.Linear(2, 2)
        llm.get_decoder = lambda: HeadOnly.llm  # type: ignore[assignment]

    assert conditions.condition_parts(OtherMerge()) is None
    assert conditions.condition_parts(HeadOnly()) is None

    class Official:
        def __init__(self) -> None:
            self.asked: list[dict[str, Any]] = []

        def generate_condition(self, input_ids: Any, **kwargs: Any) -> dict[str, Any]:
            self.asked.append({"input_ids": input_ids, **kwargs})
            return {"txt": torch.zeros(1, 2, 4)}

    official = Official()
    ids = torch.ones(1, 2, dtype=torch.long)
    cond = conditions.condition(
        official, ids, attention_mask=ids > 0, pixel_values=ids, grid_thws=ids, num_steps=3
    )
    assert cond["txt"].shape == (1, 2, 4)
    assert [sorted(asked) for asked in official.asked] == [
        ["attention_mask", "grid_thws", "input_ids", "num_steps", "pixel_values"]
    ]


# -- requests prepared ahead -------------------------------------------------------------------------------
def _of(calls: list[dict[str, Any]], fn: str) -> list[dict[str, Any]]:
    return [c for c in calls if c["fn"] == fn]


def _inputs_of(request: Any) -> conditions.ImageInputs:
    assert isinstance(request.prepared, conditions.ImageInputs)
    return request.prepared


def test_a_prepared_request_gives_the_image_an_unprepared_one_gives(standin: OvisU1Backend) -> None:
    calls = standin.model.calls
    for request in REQUESTS:
        plain = _run(standin, request)  # also the size's unconditional condition, kept from then on
        prepared = standin.prepare(request)
        inputs = _inputs_of(prepared)
        assert inputs.serves(request)
        assert (inputs.no_txt is None) == isinstance(request, GenerateRequest)
        calls.clear()
        image = _run(standin, prepared)
        assert _of(calls, "preprocess_inputs") == []  # all of the host work was done ahead
        assert np.array_equal(np.asarray(image), np.asarray(plain)), type(request).__name__
        assert request.prepared is None  # the worker's request is left as it was


def test_inputs_prepared_for_another_request_are_not_used(standin: OvisU1Backend) -> None:
    bird = replace(GENERATE, prompt="a blue bird")
    astronaut = replace(EDIT, image=sample_photo("astronaut.png", size=160))
    for request, other in ((GENERATE, bird), (EDIT, astronaut)):
        prepared = standin.prepare(request)
        # the same prepared inputs, another prompt or source: the batch makes the other's own
        stale = replace(other, prepared=_inputs_of(prepared))
        assert not _inputs_of(stale).serves(stale)
        assert np.array_equal(np.asarray(_run(standin, stale)), np.asarray(_run(standin, other)))
        assert not np.array_equal(np.asarray(_run(standin, stale)), np.asarray(_run(standin, request)))


def test_a_request_that_cannot_be_prepared_is_left_to_the_batch(
    standin: OvisU1Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = standin.model.visual_generator
    crop = generator.process_image_aspectratio
    expected = {id(request): np.asarray(_run(standin, request)) for request in REQUESTS}
    fails = [True]

    def crop_once_broken(*args: Any, **kwargs: Any) -> Any:
        if fails and fails.pop():
            raise OSError("image file is truncated")
        return crop(*args, **kwargs)

    for request in REQUESTS:
        fails[:] = [True]
        monkeypatch.setattr(generator, "process_image_aspectratio", crop_once_broken)
        assert standin.prepare(request) is request  # unprepared: the batch does the work
        assert np.array_equal(np.asarray(_run(standin, request)), expected[id(request)])

    # A request the batch refuses is not prepared at all; one whose work keeps failing fails in the batch,
    # which the worker reports for that item.
    huge = replace(GENERATE, width=100_000)
    assert standin.prepare(huge) is huge

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("image file is truncated")

    monkeypatch.setattr(generator, "process_image_aspectratio", broken)
    for request in REQUESTS:
        assert standin.prepare(request) is request
        with pytest.raises(OSError, match="truncated"):
            _run(standin, request)


def test_requests_prepared_on_several_threads_get_their_own_inputs(standin: OvisU1Backend) -> None:
    requests: list[Any] = [replace(GENERATE, prompt=f"a fox {k} " + "in the snow " * k) for k in range(12)]
    requests += [replace(EDIT, instruction=f"make it blue {k} " * (k + 1)) for k in range(4)]
    alone = [conditions.image_inputs(standin.model, r) for r in requests]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(standin.prepare, requests))
    for request, mine, theirs in zip(together, alone, requests, strict=True):
        inputs = _inputs_of(request)
        assert inputs.serves(theirs)
        for got, want in ((inputs.cond, mine.cond), (inputs.no_txt, mine.no_txt)):
            if want is None:
                assert got is None
                continue
            assert got is not None
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
        assert torch.equal(inputs.vae_pixel_values, mine.vae_pixel_values)
    assert len({len(_inputs_of(r).cond.input_ids) for r in together}) > 1


# -- a tiny build of the official remote code ------------------------------------------------------------
@pytest.fixture(scope="module")
def real_code_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with built(tmp_path_factory.mktemp("ovis-u1-tiny") / "model") as directory:
        yield directory


@needs_remote_code
@pytest.mark.parametrize(("dtype", "torch_dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_conditions_equal_generate_condition_s_on_the_real_code(
    real_code_dir: Path, tmp_path: Path, dtype: str, torch_dtype: torch.dtype
) -> None:
    with real_code_backend(real_code_dir, tmp_path / "modules", "cpu", dtype) as backend:
        assert type(backend.model).__name__ == "OvisU1"
        _assert_equal_conditions(backend, torch_dtype)


@needs_remote_code
def test_images_equal_the_official_flow_s_on_the_real_code(real_code_dir: Path, tmp_path: Path) -> None:
    with real_code_backend(real_code_dir, tmp_path / "modules", "cpu", "float32") as backend:
        _assert_official_images(backend)
        plain = [np.asarray(_run(backend, request)) for request in REQUESTS]
        prepared = [np.asarray(_run(backend, backend.prepare(request))) for request in REQUESTS]
        assert all(np.array_equal(a, b) for a, b in zip(plain, prepared, strict=True))
