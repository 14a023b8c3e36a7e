"""A fast tokenizer shared by threads that change its truncation settings: guarded, every call succeeds and
gives what it gives alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from gpu_model.tiny_tokenizers import load_qwen_tokenizer
from gpu_model.tokenizer_lock import LockedBackend, guard_tokenizer

TEXTS = [f"caption number {k}: " + "a red cat on a mat " * (k % 7 + 1) for k in range(64)]


def _encode(tokenizer: object, k: int) -> list[int]:
    # Alternate truncation on and off: the backend's settings change between calls, as in the failure.
    kwargs = {"truncation": True, "max_length": 8} if k % 2 else {}
    ids: list[int] = tokenizer(TEXTS[k], **kwargs)["input_ids"]  # type: ignore[operator]
    return ids


def test_a_guarded_tokenizer_serves_many_threads_with_the_results_of_one() -> None:
    alone = load_qwen_tokenizer()
    expected = [_encode(alone, k) for k in range(len(TEXTS))]
    shared = load_qwen_tokenizer()
    assert guard_tokenizer(shared)
    assert guard_tokenizer(shared)  # once: a second call keeps the first lock
    assert isinstance(shared._tokenizer, LockedBackend)
    with ThreadPoolExecutor(16) as pool:
        for _ in range(20):
            got = list(pool.map(lambda k: _encode(shared, k), range(len(TEXTS))))
            assert got == expected
    assert shared.decode(expected[3]) == alone.decode(expected[3])
    assert len(shared) == len(alone)


def test_a_tokenizer_without_a_rust_backend_is_left_alone() -> None:
    class Plain:
        pass

    assert guard_tokenizer(Plain()) is False
