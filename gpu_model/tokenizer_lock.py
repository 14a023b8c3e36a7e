"""A fast tokenizer shared by threads: every use of its Rust backend under one lock.

A Hugging Face fast tokenizer's backend is one object whose methods borrow it (encode) or change it
(truncation and padding settings, set on every call when they differ); two threads using it at once can fail
with `RuntimeError: Already borrowed`. The caption inputs are prepared on the worker's I/O threads through
the model's own `preprocess_inputs`, which tokenizes the prompt and then resizes and normalises the image.
Guarding the tokenizer alone serialises the tokenization (microseconds for a prompt) and leaves the image
work, which is most of the time, to run in parallel.
"""

from __future__ import annotations

import threading
from typing import Any


class LockedBackend:
    """Forwards every attribute of a tokenizers.Tokenizer, reading and calling it under `lock`."""

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_lock", lock)

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            value = getattr(self._inner, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return locked

    def __setattr__(self, name: str, value: Any) -> None:
        with self._lock:
            setattr(self._inner, name, value)


def guard_tokenizer(tokenizer: Any) -> bool:
    """Make a fast tokenizer safe to share between threads (once); False for one without a Rust backend.

    One reentrant lock guards each encode as a whole (its truncation and padding settings are set on the
    backend, then the text encoded: another thread's settings must not come in between), each decode, and
    any other use of the backend."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or isinstance(backend, LockedBackend):
        return isinstance(backend, LockedBackend)
    lock = threading.RLock()
    tokenizer._tokenizer = LockedBackend(backend, lock)
    for name in ("_batch_encode_plus", "_decode"):
        method = getattr(tokenizer, name, None)
        if method is not None:
            setattr(tokenizer, name, _locked(method, lock))
    return True


def _locked(method: Any, lock: threading.RLock) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return call
