"""Greedy captions are split by padded-token budget, shortest prompts first: every row in exactly one call,
each call within the budget (or alone), and the captions unchanged by the split."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gpu_model import BackendOptions, CaptionRequest
from gpu_model.ovis_u1 import OvisU1Backend
from gpu_model.ovis_u1_pipeline import CaptionInputs, OvisU1Pipeline, caption_groups, prompt_tokens
from tests.fixtures.ovis_u1_standin.build import build_standin, isolated_modules_cache


def _row(text_ids: int, grid: tuple[int, int, int]) -> CaptionInputs:
    return CaptionInputs(torch.zeros(text_ids, dtype=torch.long), torch.zeros(1, 1), torch.tensor([grid]))


def test_prompt_tokens_count_text_ids_and_merged_patches() -> None:
    # A 1288x952 image in 14 px patches is a 92x68 grid: 1,564 visual tokens once 2x2 patches merge.
    assert prompt_tokens(_row(40, (1, 92, 68))) == 40 + 1564
    assert prompt_tokens(_row(40, (1, 32, 32))) == 40 + 256


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=60),
            st.sampled_from([(1, 32, 32), (1, 64, 48), (1, 92, 68), (1, 128, 128)]),
            st.integers(min_value=1, max_value=400),
        ),
        min_size=1,
        max_size=64,
    ),
    st.integers(min_value=1, max_value=200_000),
)
def test_every_row_lands_in_one_call_within_the_budget(
    shapes: list[tuple[int, tuple[int, int, int], int]], budget: int
) -> None:
    rows = [_row(text, grid) for text, grid, _ in shapes]
    limits = [limit for _, _, limit in shapes]
    groups = caption_groups(rows, limits, budget)
    assert sorted(k for group in groups for k in group) == list(range(len(rows)))
    lengths = [prompt_tokens(row) for row in rows]
    for group in groups:
        assert group
        padded = len(group) * (max(lengths[k] for k in group) + max(limits[k] for k in group))
        assert padded <= budget or len(group) == 1
    # Shortest prompts first: no call holds a prompt shorter than one of an earlier call.
    for before, after in pairwise(groups):
        assert max(lengths[k] for k in before) <= min(lengths[k] for k in after)


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("ovis-u1") / "Ovis-U1-standin")


def test_captions_split_by_budget_equal_one_call_and_batch_of_one(standin_dir: Path, tmp_path: Path) -> None:
    backend = OvisU1Backend(BackendOptions(model_path=str(standin_dir), device="cpu"), dtype="float32")
    with isolated_modules_cache(tmp_path):
        backend.load()
    sizes = [(150, 150), (40, 120), (80, 60), (64, 32), (120, 90)]
    requests = [
        CaptionRequest(
            image=Image.new("RGB", size, (30 * k, 200 - 30 * k, 90)), prompt="What?", max_new_tokens=n
        )
        for k, (size, n) in enumerate(zip(sizes, [6, 3, 9, 4, 7], strict=True))
    ]
    whole = OvisU1Pipeline(backend.model, device="cpu", dtype_name="float32", token_budget=10**9)
    expected = whole.caption(requests)
    assert expected == [whole.caption([r])[0] for r in requests]
    split = OvisU1Pipeline(backend.model, device="cpu", dtype_name="float32", token_budget=1)
    calls: list[int] = []
    generate = backend.model.generate
    backend.model.generate = lambda ids, **kw: calls.append(len(ids)) or generate(ids, **kw)
    try:
        assert split.caption(requests) == expected
    finally:
        del backend.model.generate
    assert calls == [1] * len(requests)  # a budget of one token: every row alone


def test_caption_calls_are_counted_with_their_split(standin_dir: Path, tmp_path: Path) -> None:
    backend = OvisU1Backend(BackendOptions(model_path=str(standin_dir), device="cpu"), dtype="float32")
    with isolated_modules_cache(tmp_path):
        backend.load()
    pipeline = OvisU1Pipeline(
        backend.model, device="cpu", dtype_name="float32", fast_decode=True, token_budget=1
    )
    requests = [
        CaptionRequest(image=Image.new("RGB", size, (90, 40, 200)), prompt="What?", max_new_tokens=4)
        for size in [(150, 150), (40, 120), (80, 60)]
    ]
    pipeline.caption(requests)
    stats = pipeline.caption_stats
    rows = [pipeline._prepared(r) for r in requests]
    assert (stats.calls, stats.rows) == (3, 3)  # a budget of one token: one call per row
    assert stats.prompt_tokens == stats.padded_prompt_tokens == sum(prompt_tokens(r) for r in rows)
    assert stats.merge_s > 0 and stats.decode_s > 0
    assert set(stats.as_dict()) == {
        "calls",
        "rows",
        "prompt_tokens",
        "padded_prompt_tokens",
        "merge_s",
        "decode_s",
    }
