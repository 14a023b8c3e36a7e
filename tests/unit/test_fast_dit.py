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


@pytest.mark.cuda
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


@pytest.mark.cuda
def test_a_function_that_syncs_with_the_host_runs_plainly() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item())

    graphed = GraphedCall(fn)
    x = torch.ones(3, device="cuda")
    assert graphed(x).tolist() == [3.0] * 3
    assert graphed(x).tolist() == [3.0] * 3
    assert graphed.captures == 0


@pytest.mark.cuda
def test_a_clean_function_is_captured_after_one_warm_up_run() -> None:
    runs: list[int] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        runs.append(1)
        return x * 2

    graphed = GraphedCall(fn)
    x = torch.ones(3, device="cuda")
    assert graphed(x).tolist() == [2.0] * 3 and graphed(x).tolist() == [2.0] * 3
    assert (len(runs), graphed.captures, graphed.replays) == (2, 1, 2)  # one warm-up run, one capture


@pytest.mark.cuda
def test_a_sync_in_the_first_run_only_is_forgiven_when_warmup_allows() -> None:
    def make() -> tuple[list[int], object]:
        runs: list[int] = []

        def fn(x: torch.Tensor) -> torch.Tensor:
            if not runs:
                float(x.sum())  # the first run syncs, as compilation and autotuning do
            runs.append(1)
            return x + 1

        return runs, fn

    runs, fn = make()
    graphed = GraphedCall(fn, warmup=2)  # type: ignore[arg-type]
    x = torch.zeros(2, device="cuda")
    assert graphed(x).tolist() == [1.0, 1.0] and graphed.captures == 1 and len(runs) == 3
    _, fn = make()
    strict = GraphedCall(fn, warmup=1)  # type: ignore[arg-type]
    assert strict(x).tolist() == [1.0, 1.0] and strict.captures == 0
