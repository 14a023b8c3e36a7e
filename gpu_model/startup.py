"""What a worker says while it starts and when work first meets a shape, so that an operator watching its log
knows it is not hung.

Start-up phases (resolving the model, loading weights, warming up) each log one INFO line with the seconds
since the worker began starting. A compiled path met at a new shape (the generator at an image size it has
not run yet) compiles and captures its CUDA graphs inside that model call: `FirstUse` logs the compile
before it starts, with the folder that caches it, and when it ends, with what torch's persistent caches did.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator

from gpu_model.compile_cache import compile_counters, describe_compiles, inductor_cache_dir

log = logging.getLogger(__name__)


class StartupClock:
    """Seconds since this process began starting its worker; one INFO line per phase."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def restart(self) -> None:
        """Count from now (a worker runtime starts)."""
        self._started = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self._started

    def phase(self, logger: logging.Logger, message: str, *args: object) -> None:
        """Log that a phase begins (or ended), with the seconds since the start."""
        logger.info("start-up %.1fs: " + message, self.elapsed, *args)


#: The process's start-up clock, shared by the worker runtime and the backends it loads.
startup = StartupClock()


class FirstUse:
    """Logs the first model call of a compiled path at each shape: what compiles, where it is cached, how long
    the call took and whether torch's caches served it. Off (silent) where nothing compiles (the CPU)."""

    def __init__(self, what: str, *, enabled: bool = True) -> None:
        #: What compiles, for the log ("the generator").
        self.what = what
        self.enabled = enabled
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def seen(self, shape: str) -> bool:
        """Whether a call at `shape` has already ended well."""
        with self._lock:
            return shape in self._seen

    @contextlib.contextmanager
    def __call__(self, shapes: Iterable[str]) -> Iterator[None]:
        """Around one model call over items of `shapes` ("1024x1024"); a call that raises marks nothing."""
        new = [shape for shape in dict.fromkeys(shapes) if not self.seen(shape)] if self.enabled else []
        if not new:
            yield
            return
        label = ", ".join(new)
        log.info(
            "compiling %s for %s (first use; cached in %s); this model call includes the compile and the "
            "CUDA graph capture, which the stall watchdog counts as one call",
            self.what,
            label,
            inductor_cache_dir(),
        )
        before, started = compile_counters(), time.monotonic()
        yield
        with self._lock:
            self._seen.update(new)
        log.info(
            "%s ready for %s: the first call took %.1fs, its compile included (%s)",
            self.what,
            label,
            time.monotonic() - started,
            describe_compiles(before, compile_counters()),
        )
