"""The delay before a chunk that hit a transient fault is tried again."""

from __future__ import annotations

from workers.tasks import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff


def test_transient_retries_back_off_exponentially_with_full_jitter() -> None:
    for retries in range(10):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retries)
        delays = [backoff(retries) for _ in range(400)]
        assert all(0 <= delay <= ceiling for delay in delays)
        # Spread over the whole window, so that workers retrying together do not stampede again.
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling
