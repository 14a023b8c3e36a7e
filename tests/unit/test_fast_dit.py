"""GraphedCall: plain calls off CUDA, and on CUDA one captured graph per signature replaying `fn`."""

from __future__ import annotations

import pytest
import torch

from gpu_model.fast_dit import GraphedCall


def test_calls_off_cuda_run_the_function_itself() -> None:
    seen: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x * scale

    graphed = GraphedCall(fn)
    assert graphed(torch.ones(2, 3), scale=2.0).tolist() == [[2.0] * 3] * 2
    assert graphed(torch.ones(4)).tolist() == [1.0] * 4
    assert seen == [(2, 3), (4,)] and (graphed.captures, graphed.replays) == (0, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_replays_equal_plain_calls_per_signature() -> None:
    layer = torch.nn.Linear(16, 16).cuda()

    def fn(x: torch.Tensor, pair: tuple[torch.Tensor, torch.Tensor], gain: float) -> dict[str, torch.Tensor]:
        return {"out": torch.relu(layer(x) * pair[0] + pair[1]) * gain}

    graphed = GraphedCall(fn, size=2)
    with torch.inference_mode():
        for rows, gain in [(4, 1.0), (4, 1.0), (8, 1.0), (4, 2.0), (4, 1.0)]:
            x = torch.randn(rows, 16, device="cuda")
            pair = (torch.randn(16, device="cuda"), torch.randn(16, device="cuda"))
            got = graphed(x, pair, gain)["out"]
            assert torch.equal(got, fn(x, pair, gain)["out"])
        kept = graphed(x, pair, 1.0)["out"]
        graphed(torch.zeros(4, 16, device="cuda"), pair, 1.0)  # the next replay leaves earlier outputs alone
        assert torch.equal(kept, fn(x, pair, 1.0)["out"])
    # (4, 1.0) captured, replayed; (8, 1.0) and (4, 2.0) captured; two graphs kept, so (4, 1.0) again.
    assert graphed.captures == 4 and graphed.replays == 7


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_function_that_syncs_with_the_host_runs_plainly() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item())

    graphed = GraphedCall(fn)
    x = torch.ones(3, device="cuda")
    assert graphed(x).tolist() == [3.0] * 3
    assert graphed(x).tolist() == [3.0] * 3
    assert graphed.captures == 0
