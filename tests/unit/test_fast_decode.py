"""The static-cache greedy decoder gives the tokens of `generate`, row by row, on a tiny Qwen3 in float32."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM

from gpu_model.fast_decode import GreedyDecoder

PAD = 0
VOCAB = 96


@pytest.fixture(scope="module")
def model() -> Qwen3ForCausalLM:
    torch.manual_seed(3)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as Qwen3-1.7B
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=None,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        attn_implementation="sdpa",
    )
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def compacting(model: Qwen3ForCausalLM) -> GreedyDecoder:
    """One compacting decoder for every example of the property test: its arena and shapes are reused across
    calls, as a worker's are."""
    return GreedyDecoder(model, max_batch=32)


def _prompts(
    model: Qwen3ForCausalLM, lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Left-padded prompt embeddings and mask, and each prompt's own (unpadded) embeddings."""
    generator = torch.Generator().manual_seed(sum(lengths))
    embed = model.get_input_embeddings()
    rows = [embed(torch.randint(1, VOCAB, (n,), generator=generator)) for n in lengths]
    width = max(lengths)
    embeds = torch.zeros(len(rows), width, model.config.hidden_size)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, row in enumerate(rows):
        embeds[k, width - len(row) :] = row
        mask[k, width - len(row) :] = 1
    return embeds, mask, rows


def _reference(model: Qwen3ForCausalLM, row: torch.Tensor, new_tokens: int, eos: int | None) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            inputs_embeds=row[None],
            attention_mask=torch.ones(1, len(row), dtype=torch.long),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
    return [int(t) for t in out[0]]


def _until_end(tokens: list[int], eos: int | None, limit: int) -> list[int]:
    tokens = tokens[:limit]
    return tokens[: tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_batched_rows_equal_generate_at_batch_one(model: Qwen3ForCausalLM, attention: str) -> None:
    embeds, mask, rows = _prompts(model, [7, 12, 3])
    limits = [20, 9, 14]
    decoder = GreedyDecoder(model, max_batch=8, attention=attention)
    out = decoder.generate(embeds, mask, limits, eos_token_id=None, pad_token_id=PAD)
    assert out.shape == (3, 20)
    for k, row in enumerate(rows):
        expected = _reference(model, row, limits[k], None)
        assert out[k, : limits[k]].tolist() == expected
        assert out[k, limits[k] :].eq(PAD).all()


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_rows_stop_at_eos_and_pad_after(model: Qwen3ForCausalLM, attention: str) -> None:
    embeds, mask, rows = _prompts(model, [5, 9])
    free_run = _reference(model, rows[0], 12, None)
    eos = free_run[4]  # row 0 meets it at step 4 (or earlier)
    decoder = GreedyDecoder(model, max_batch=4, check_every=2, attention=attention)
    out = decoder.generate(embeds, mask, 12, eos_token_id=[eos, VOCAB + 5], pad_token_id=PAD)
    for k, row in enumerate(rows):
        expected = _until_end(_reference(model, row, 12, eos), eos, 12)
        assert out[k, : len(expected)].tolist() == expected
        assert out[k, len(expected) :].eq(PAD).all()
    assert eos in out[0].tolist()


def test_a_decoder_is_reused_across_batches(model: Qwen3ForCausalLM) -> None:
    """The second call reuses the static cache that the first one filled; stale slots must not leak in."""
    decoder = GreedyDecoder(model, max_batch=4)
    first_embeds, first_mask, _ = _prompts(model, [11, 4, 8])
    second_embeds, second_mask, rows = _prompts(model, [6, 10])
    decoder.generate(first_embeds, first_mask, 16, eos_token_id=None, pad_token_id=PAD)
    out = decoder.generate(second_embeds, second_mask, 16, eos_token_id=None, pad_token_id=PAD)
    for k, row in enumerate(rows):
        assert out[k].tolist() == _reference(model, row, 16, None)


def test_batched_generate_of_transformers_agrees(model: Qwen3ForCausalLM) -> None:
    """Left-padded batched `generate` (what the official remote code does) gives the same rows."""
    embeds, mask, _ = _prompts(model, [8, 13, 6, 13])
    with torch.inference_mode():
        expected = model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD
        )
    out = GreedyDecoder(model, max_batch=4).generate(embeds, mask, 10, eos_token_id=None, pad_token_id=PAD)
    assert out.tolist() == expected.tolist()


def test_requests_outside_the_limits_are_refused(model: Qwen3ForCausalLM) -> None:
    embeds, mask, _ = _prompts(model, [4, 4, 4])
    decoder = GreedyDecoder(model, max_batch=2)
    with pytest.raises(ValueError, match="max_batch"):
        decoder.generate(embeds, mask, 4, eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate(embeds[:2], mask[:2], [4, 0], eos_token_id=None, pad_token_id=PAD)
    with pytest.raises(ValueError, match="attention"):
        GreedyDecoder(model, attention="flash")


@pytest.mark.cuda
def test_cuda_graph_path_equals_the_eager_path(model: Qwen3ForCausalLM) -> None:
    gpu = Qwen3ForCausalLM(model.config).eval().cuda()
    gpu.load_state_dict(model.state_dict())
    embeds, mask, _ = _prompts(model, [9, 5, 14])
    graphed = GreedyDecoder(gpu, max_batch=4, use_cuda_graph=True, max_shapes=1)
    args = (embeds.cuda(), mask.cuda(), [24, 7, 16])
    out = graphed.generate(*args, eos_token_id=None, pad_token_id=PAD)
    assert graphed.capture_error is None
    variant = next(iter(graphed._slots.values())).variant or "sdpa"
    eager = GreedyDecoder(gpu, max_batch=4, use_cuda_graph=False, attention=variant)
    expected = eager.generate(*args, eos_token_id=None, pad_token_id=PAD)
    assert out.tolist() == expected.tolist()
    # A second shape evicts the first (max_shapes=1); capturing again must work.
    graphed.generate(embeds[:1].cuda(), mask[:1].cuda(), 40, eos_token_id=None, pad_token_id=PAD)
    assert graphed.generate(*args, eos_token_id=None, pad_token_id=PAD).tolist() == expected.tolist()
    assert graphed.capture_error is None


def test_rows_that_end_early_move_to_a_smaller_batch_and_keep_their_tokens(model: Qwen3ForCausalLM) -> None:
    lengths = [7, 12, 3, 9, 5, 11, 4, 8]
    limits = [3, 30, 5, 26, 2, 9, 4, 6]
    embeds, mask, rows = _prompts(model, lengths)
    decoder = GreedyDecoder(model, max_batch=8, check_every=2)
    out = decoder.generate(embeds, mask, limits, eos_token_id=None, pad_token_id=PAD)
    assert decoder.compactions >= 2  # 8 rows -> 4 (or fewer) -> 2
    assert out.shape == (8, 30)
    for k, row in enumerate(rows):
        assert out[k, : limits[k]].tolist() == _reference(model, row, limits[k], None)
        assert out[k, limits[k] :].eq(PAD).all()


def test_rows_that_end_at_eos_are_dropped_too(model: Qwen3ForCausalLM) -> None:
    embeds, mask, rows = _prompts(model, [6, 9, 4, 7])
    free_runs = [_reference(model, row, 24, None) for row in rows]
    eos = free_runs[0][2]  # row 0 ends by step 2; the others when they meet it, or at 24
    decoder = GreedyDecoder(model, max_batch=4, check_every=2)
    out = decoder.generate(embeds, mask, 24, eos_token_id=eos, pad_token_id=PAD)
    for k, row in enumerate(rows):
        expected = _until_end(_reference(model, row, 24, eos), eos, 24)
        assert out[k, : len(expected)].tolist() == expected
        assert out[k, len(expected) :].eq(PAD).all()


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=10), st.integers(min_value=1, max_value=20)),
        min_size=1,
        max_size=20,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_dropping_ended_rows_never_changes_a_row(
    model: Qwen3ForCausalLM, compacting: GreedyDecoder, shapes: list[tuple[int, int]], check_every: int
) -> None:
    """Whatever the prompt lengths, limits and check interval: the same tokens with and without compaction,
    and the decoder (its shared cache) reused across calls."""
    compacting.check_every = check_every
    lengths, limits = [n for n, _ in shapes], [m for _, m in shapes]
    embeds, mask, _ = _prompts(model, lengths)
    plain = GreedyDecoder(model, max_batch=32, check_every=check_every, compact=False)
    expected = plain.generate(embeds, mask, limits, eos_token_id=None, pad_token_id=PAD)
    got = compacting.generate(embeds, mask, limits, eos_token_id=None, pad_token_id=PAD)
    assert got.tolist() == expected.tolist()
