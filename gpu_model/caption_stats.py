"""Where greedy caption calls spend their time: the model's own image encoding and merge, then the decoder.

Kept by the ovis-u1 pipeline for each process (read by benchmarks; each call is also a DEBUG log line), so a
run on a GPU tells whether the vision tower, the prefill or the decode steps bound captioning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class CaptionStats:
    """Totals over every greedy caption call so far."""

    calls: int = 0
    rows: int = 0
    #: Merged prompt tokens (text ids + visual tokens), and what the calls padded them to.
    prompt_tokens: int = 0
    padded_prompt_tokens: int = 0
    #: Seconds from the call to the decoder's start: preprocessing left on the call, the vision tower and the
    #: multimodal merge.
    merge_s: float = 0.0
    #: Seconds in the decoder: prefill and every decode step.
    decode_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


class CaptionTimer:
    """Times one call: `decoding()` marks the decoder's start, the context's end the call's end (both after a
    device sync, so the split is the device's)."""

    def __init__(self, stats: CaptionStats, device: torch.device) -> None:
        self.stats, self.device = stats, device
        self.started = self.decoding_at = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def decoding(self) -> None:
        self.decoding_at = self._now()

    @contextmanager
    def call(self, lengths: list[int]) -> Iterator[None]:
        self.started = self.decoding_at = time.perf_counter()
        yield
        ended = self._now()
        merge, decode = self.decoding_at - self.started, ended - self.decoding_at
        stats = self.stats
        stats.calls += 1
        stats.rows += len(lengths)
        stats.prompt_tokens += sum(lengths)
        stats.padded_prompt_tokens += len(lengths) * max(lengths, default=0)
        stats.merge_s += merge
        stats.decode_s += decode
        log.debug(
            "caption call: %d rows, prompts %d-%d tokens, merge %.2fs, decode %.2fs",
            len(lengths),
            min(lengths, default=0),
            max(lengths, default=0),
            merge,
            decode,
        )
