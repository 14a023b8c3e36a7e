"""A worker's start: it warms up only the kinds of the queues it consumes, logs each phase, and the first
model call at a new image size says that it compiles, where that is cached and what the caches did."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gpu_model import BackendOptions, EditRequest, GenerateRequest
from gpu_model.fake import FakeBackend
from gpu_model.ovis_u1 import OvisU1Backend
from gpu_model.shaped import ShapedBackend, edit_size
from gpu_model.startup import FirstUse
from gpu_model.tiny import TinyBackend
from jobs.settings import Settings
from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache
from workers.runtime import WorkerRuntime, consumed_kinds

GREY = Image.new("RGB", (48, 40), (128, 128, 128))


def _settings(tmp_path: Path, **values: Any) -> Settings:
    # An empty compile cache setting: these tests leave the process's environment alone.
    return Settings(home=tmp_path, compile_cache="", **values)


def _spy(monkeypatch: pytest.MonkeyPatch, backend: Any, names: Collection[str]) -> list[str]:
    """Record, in order, which of the backend's batch methods run."""
    calls: list[str] = []
    for name in names:
        method = getattr(backend, name)

        def recorded(requests: list[Any], _name: str = name, _method: Callable[..., Any] = method) -> Any:
            calls.append(_name)
            return _method(requests)

        monkeypatch.setattr(backend, name, recorded)
    return calls


@pytest.mark.parametrize(
    ("queues", "kinds"),
    [
        ([], None),
        (["ovis.caption"], {"caption"}),
        (["ovis.generate", "ovis.edit"], {"generate", "edit"}),
        (["ovis.caption", "night-shift"], None),  # a queue of no known kind: it may carry any
    ],
)
def test_the_kinds_a_worker_takes_come_from_its_queues(
    tmp_path: Path, queues: list[str], kinds: set[str] | None
) -> None:
    settings = _settings(tmp_path)

    assert consumed_kinds(settings, queues) == (None if kinds is None else frozenset(kinds))
    assert consumed_kinds(_settings(tmp_path, queues=queues)) == consumed_kinds(settings, queues)


class _Warmups(FakeBackend):
    """Remembers the kinds each warm-up was asked for."""

    def __init__(self, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.asked: list[Collection[str] | None] = []

    def warmup(self, kinds: Collection[str] | None = None) -> None:
        self.asked.append(kinds)


def test_the_runtime_warms_up_the_kinds_of_its_queues_and_logs_each_phase(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _Warmups()
    runtime = WorkerRuntime(_settings(tmp_path, backend="fake", queues=["ovis.caption"]), backend)

    with caplog.at_level(logging.INFO, logger="workers.runtime"):
        runtime.load()
        runtime.load()  # loaded once

    assert backend.asked == [frozenset({"caption"})]
    lines = [r.getMessage() for r in caplog.records if r.name == "workers.runtime"]
    lines = [line for line in lines if line.startswith("start-up ")]
    assert len(lines) == 3, lines
    assert "loading backend fake; compile cache: off" in lines[0]
    assert "warming up for caption" in lines[1]
    assert "ready on cpu" in lines[2] and "within the stall limit of 900s" in lines[2]


def test_kinds_given_to_load_win_over_the_configured_queues(tmp_path: Path) -> None:
    backend = _Warmups()
    runtime = WorkerRuntime(_settings(tmp_path, backend="fake"), backend)

    runtime.load(frozenset({"edit"}))

    assert backend.asked == [frozenset({"edit"})]


def test_a_caption_worker_warms_up_no_image_work_on_the_tiny_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = TinyBackend(BackendOptions(device="cpu"))
    calls = _spy(monkeypatch, backend, ("caption", "generate", "edit"))
    runtime = WorkerRuntime(_settings(tmp_path, queues=["ovis.caption"]), backend)

    with caplog.at_level(logging.INFO, logger="workers.runtime"):
        runtime.load()

    assert calls == ["caption"]
    assert any("persistent compile caches" in r.getMessage() for r in caplog.records)

    calls.clear()
    backend.warmup()
    assert calls == ["caption", "generate", "edit"]


@pytest.fixture(scope="module")
def shaped() -> ShapedBackend:
    backend = ShapedBackend(BackendOptions(device="cpu", max_batch={"caption": 2}))
    backend.load()
    return backend


@pytest.mark.parametrize(("kinds", "expected"), [({"caption"}, ["caption"]), ({"generate", "edit"}, [])])
def test_the_shaped_stand_in_warms_up_captions_only_and_leaves_images_to_their_first_use(
    shaped: ShapedBackend, monkeypatch: pytest.MonkeyPatch, kinds: set[str], expected: list[str]
) -> None:
    calls = _spy(monkeypatch, shaped, ("caption", "generate", "edit"))

    shaped.warmup(kinds)

    assert calls == expected


def _first_use_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpu_model.startup"]


def test_the_first_call_at_a_size_says_it_compiles_and_where_it_is_cached(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    first_use = FirstUse("the generator")

    with caplog.at_level(logging.INFO, logger="gpu_model.startup"):
        with first_use(["1024x1024", "1024x1024"]):
            pass
        with first_use(["1024x1024"]):
            pass
        with pytest.raises(RuntimeError), first_use(["768x1344"]):
            raise RuntimeError("out of memory")

    lines = _first_use_lines(caplog)
    assert lines[0].startswith(
        f"compiling the generator for 1024x1024 (first use; cached in {tmp_path / 'inductor'})"
    )
    assert lines[1].startswith("the generator ready for 1024x1024: the first call took ")
    assert lines[1].endswith("(nothing compiled)")
    # The same size again logs nothing; a call that failed leaves its size to be compiled at the next one.
    assert lines[2].startswith("compiling the generator for 768x1344 (first use;") and len(lines) == 3
    assert first_use.seen("1024x1024") and not first_use.seen("768x1344")


def test_the_shaped_stand_in_logs_the_first_image_of_each_size(
    shaped: ShapedBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shaped, "first_use", FirstUse("the DiT"))  # on the CPU nothing compiles: forced on

    with caplog.at_level(logging.INFO, logger="gpu_model.startup"):
        shaped.generate([GenerateRequest("a cat", 80, 64, steps=1, seed=0, txt_cfg=5.0)] * 2)
        shaped.edit([EditRequest(GREY, "make it red", steps=1, seed=0, img_cfg=1.5, txt_cfg=6.0)])
        shaped.generate([GenerateRequest("a dog", 80, 64, steps=1, seed=1, txt_cfg=5.0)])

    lines = _first_use_lines(caplog)
    assert [line.split(" (first use")[0] for line in lines if line.startswith("compiling")] == [
        "compiling the DiT for 80x64",
        "compiling the DiT for {}x{} edits".format(*edit_size(*GREY.size)),
    ]
    assert len(lines) == 4


def test_the_ovis_u1_backend_logs_the_first_image_of_each_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = OvisU1Backend(BackendOptions(model_path=str(build_standin(tmp_path / "standin")), device="cpu"))
    with isolated_modules_cache(tmp_path / "modules"):
        backend.load()
    assert not backend.first_use.enabled  # the CPU compiles nothing
    backend.first_use.enabled = True
    height, width = backend._pipeline.edit_size(*GREY.size) if backend._pipeline else (0, 0)

    with caplog.at_level(logging.INFO, logger="gpu_model.startup"):
        backend.generate([GenerateRequest("a cat", 80, 64, steps=1, seed=0, txt_cfg=5.0)])
        backend.edit([EditRequest(GREY, "make it red", steps=1, seed=0, img_cfg=1.5, txt_cfg=6.0)])
        backend.warmup({"caption"})

    starts = [
        line.split(" (first use")[0] for line in _first_use_lines(caplog) if line.startswith("compiling")
    ]
    assert starts == [
        "compiling the generator for 80x64",
        f"compiling the generator for {width}x{height} edits",
    ]
