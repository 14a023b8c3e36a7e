"""The tiny backend: real model code paths with random weights, on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("diffusers")
skimage_data = pytest.importorskip("skimage.data")

from gpu_model import (  # noqa: E402
    BackendOptions,
    BackendOutOfMemory,
    CaptionRequest,
    EditRequest,
    GenerateRequest,
    create_backend,
)
from gpu_model.tiny import TinyBackend  # noqa: E402


@pytest.fixture(scope="module")
def backend() -> TinyBackend:
    loaded = TinyBackend(BackendOptions(device="cpu"))
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [
        Image.fromarray(photo())
        for photo in (skimage_data.astronaut, skimage_data.chelsea, skimage_data.coffee)
    ]


def _captions(photos: list[Image.Image], **overrides: object) -> list[CaptionRequest]:
    prompts = ["Describe this image in detail.", "What animal is this?", "Describe the cup and the table."]
    fields: dict = {"max_new_tokens": 12, **overrides}
    return [
        CaptionRequest(image=photo, prompt=prompt, **fields)
        for photo, prompt in zip(photos, prompts, strict=True)
    ]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_registry_and_info() -> None:
    backend = create_backend("tiny", BackendOptions(max_batch={"caption": 2}))
    assert isinstance(backend, TinyBackend)
    info = backend.load()
    assert info.name == "tiny"
    assert info.device == "cpu"
    assert info.max_batch == {"caption": 2, "generate": 4, "edit": 4}
    assert info.defaults["caption"] == {"prompt": "Describe this image in detail.", "max_new_tokens": 16}
    assert info.defaults["generate"]["steps"] == 4
    assert info.defaults["edit"]["img_cfg"] == 1.5


def test_caption_batch_equals_each_caption_alone(backend: TinyBackend, photos: list[Image.Image]) -> None:
    # Ragged prompts and limits: the batch is left-padded and rows stop at their own max_new_tokens.
    requests = _captions(photos)
    requests[1] = CaptionRequest(image=photos[1], prompt="What animal is this?", max_new_tokens=5)
    batch = backend.caption(requests)
    alone = [backend.caption([request])[0] for request in requests]
    assert batch == alone
    assert len(batch) == len(requests)
    assert all(isinstance(text, str) and text for text in batch)
    assert len(set(batch)) == len(batch)


def test_caption_token_ids_match_between_batch_and_single(
    backend: TinyBackend, photos: list[Image.Image]
) -> None:
    captioner = backend._loaded().captioner
    requests = _captions(photos, max_new_tokens=16)
    batch = captioner.new_token_ids(requests)
    assert batch == [captioner.new_token_ids([request])[0] for request in requests]
    assert all(0 < len(row) <= 16 for row in batch)


def test_sampled_captions_follow_their_seed(backend: TinyBackend, photos: list[Image.Image]) -> None:
    sampled = _captions(photos, temperature=1.0, seed=7)
    batch = backend.caption(sampled)
    assert batch == [backend.caption([request])[0] for request in sampled]
    assert backend.caption(_captions(photos, temperature=1.0, seed=8)) != batch


def test_two_builds_give_the_same_outputs(backend: TinyBackend, photos: list[Image.Image]) -> None:
    other = TinyBackend()
    other.load()
    request = GenerateRequest(prompt="a cat", width=64, height=64, steps=2, seed=3, txt_cfg=5.0)
    edit = EditRequest(image=photos[2], instruction="make it blue", steps=2, seed=3, img_cfg=1.5, txt_cfg=6.0)
    assert other.caption(_captions(photos)) == backend.caption(_captions(photos))
    assert _pixels(other.generate([request])[0]).tolist() == _pixels(backend.generate([request])[0]).tolist()
    assert _pixels(other.edit([edit])[0]).tolist() == _pixels(backend.edit([edit])[0]).tolist()


def test_generate_size_and_seed(backend: TinyBackend) -> None:
    def render(seed: int, width: int = 64, height: int = 64) -> GenerateRequest:
        return GenerateRequest(
            prompt="a house by a lake", width=width, height=height, steps=4, seed=seed, txt_cfg=5.0
        )

    wide = render(1, width=96, height=48)
    images = backend.generate([render(0), wide, render(1)])
    assert len(images) == 3
    assert [image.size for image in images] == [(64, 64), (96, 48), (64, 64)]
    assert all(image.mode == "RGB" for image in images)
    alone = backend.generate([render(1)])[0]
    assert np.array_equal(_pixels(alone), _pixels(images[2]))
    assert not np.array_equal(_pixels(images[0]), _pixels(images[2]))


@pytest.mark.parametrize(("width", "height"), [(60, 64), (64, 0), (1024, 64)])
def test_generate_rejects_bad_sizes(backend: TinyBackend, width: int, height: int) -> None:
    request = GenerateRequest(prompt="a cat", width=width, height=height, steps=4, seed=0, txt_cfg=5.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        backend.generate([request])


def test_edit_keeps_aspect_ratio_and_seed(backend: TinyBackend, photos: list[Image.Image]) -> None:
    portrait = photos[1].transpose(Image.Transpose.ROTATE_90)
    sources = [photos[0], photos[1], portrait]
    requests = [
        EditRequest(image=image, instruction="make the sky purple", steps=4, seed=5, img_cfg=1.5, txt_cfg=6.0)
        for image in sources
    ]
    edited = backend.edit(requests)
    assert len(edited) == len(requests)
    for source, image in zip(sources, edited, strict=True):
        assert image.mode == "RGB"
        assert max(image.size) == 64
        assert image.width % 8 == 0 and image.height % 8 == 0
        assert image.width / image.height == pytest.approx(source.width / source.height, rel=0.1)
    assert np.array_equal(_pixels(backend.edit([requests[1]])[0]), _pixels(edited[1]))


def test_empty_batches(backend: TinyBackend) -> None:
    assert backend.caption([]) == []
    assert backend.generate([]) == []
    assert backend.edit([]) == []


def test_out_of_memory_becomes_backend_error(backend: TinyBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(backend._loaded().text_to_image), "__call__", exhausted)
    request = GenerateRequest(prompt="a cat", width=64, height=64, steps=1, seed=0, txt_cfg=5.0)
    with pytest.raises(BackendOutOfMemory) as caught:
        backend.generate([request])
    assert isinstance(caught.value.__cause__, RuntimeError)
