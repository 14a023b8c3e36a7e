"""Read-ahead: the first micro-batch of a job's next chunk, fetched and decoded while the current chunk ends.

Chunks of a job are dispatched in seq order, so the items after a chunk's range most likely make the next
chunk this worker runs. Preparing them early, without claiming them, keeps the model busy across the chunk
boundary. The next chunk takes what it claimed of them and fetches the rest as usual; everything else held
is dropped. Nothing is written to the database, and at most one speculation is held.

Decoding ahead happens before the item's attempt is counted: should a decoder crash the worker on such an
item, the chunk running then is charged that attempt, and the item itself is charged when its own chunk
decodes it again (so it is still the one quarantined in the end).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from jobs.state import ClaimedItem

log = logging.getLogger(__name__)


class Work(Protocol):
    """An item's prepared input: what a group of items is turned into on an I/O thread."""

    item: ClaimedItem


W = TypeVar("W", bound=Work)
W_co = TypeVar("W_co", bound=Work, covariant=True)


class Fetch(Protocol[W_co]):
    """The prepared work of a group of items, as the chunk consumes it: a future or a `_Reused`."""

    def result(self) -> Sequence[W_co]: ...

    def cancel(self) -> bool: ...


def same_item(a: ClaimedItem, b: ClaimedItem) -> bool:
    """Whether two rows describe the same input (attempts and `counted` are the claim's business)."""
    return (a.seq, a.key, a.source, a.text, a.params) == (b.seq, b.key, b.source, b.text, b.params)


@dataclass
class _Held(Generic[W]):
    job_id: str
    kind: str
    #: Items in seq order, in the groups they were handed to the I/O threads in, with each group's future.
    groups: list[tuple[Sequence[ClaimedItem], Future[list[W]]]]


def _failed(future: Future[list[W]]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


class ReadAhead(Generic[W]):
    """The one speculation a worker holds: set by the bookkeeping thread, taken by the next chunk."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: _Held[W] | None = None

    def hold(
        self, job_id: str, kind: str, groups: Sequence[tuple[Sequence[ClaimedItem], Future[list[W]]]]
    ) -> None:
        """Keep a new speculation; the one held before is dropped."""
        with self._lock:
            old, self._held = self._held, _Held(job_id, kind, list(groups))
        if old is not None:
            for _, future in old.groups:
                future.cancel()

    def take(self, job_id: str, kind: str, items: Sequence[ClaimedItem]) -> Taken[W]:
        """The speculation's work for the claimed `items` of the same job and kind; the rest is dropped.

        Groups whose fetch already failed are left out, so that their items are fetched again as usual.
        """
        with self._lock:
            held, self._held = self._held, None
        found: dict[int, tuple[Future[list[W]], int]] = {}
        if held is None:
            return Taken(found)
        claimed = {item.seq: item for item in items} if (held.job_id, held.kind) == (job_id, kind) else {}
        for group, future in held.groups:
            kept = False
            if not _failed(future):
                for position, item in enumerate(group):
                    mine = claimed.get(item.seq)
                    if mine is not None and same_item(mine, item):
                        found[item.seq] = (future, position)
                        kept = True
            if not kept:
                future.cancel()
        return Taken(found)


class Taken(Generic[W]):
    """The prepared work a chunk took from a speculation, by seq; `used` counts the items it served."""

    def __init__(self, found: dict[int, tuple[Future[list[W]], int]]) -> None:
        self._found = found
        self.used = 0

    def __len__(self) -> int:
        """Items still to be served."""
        return len(self._found)

    def fetch(
        self,
        group: Sequence[ClaimedItem],
        pool: Executor,
        prepare: Callable[[Sequence[ClaimedItem]], list[W]],
    ) -> Fetch[W]:
        """The work of `group`: taken where the speculation holds an item, the rest `prepare`d on `pool`."""
        if not any(item.seq in self._found for item in group):
            return pool.submit(prepare, group)
        taken = {item.seq: self._found.pop(item.seq) for item in group if item.seq in self._found}
        rest = [item for item in group if item.seq not in taken]
        return _Reused(self, group, taken, pool.submit(prepare, rest) if rest else None, prepare)


class _Reused(Generic[W]):
    """A group's work, partly from a speculation, in the group's order and carrying the claimed items."""

    def __init__(
        self,
        owner: Taken[W],
        group: Sequence[ClaimedItem],
        taken: dict[int, tuple[Future[list[W]], int]],
        rest: Future[list[W]] | None,
        prepare: Callable[[Sequence[ClaimedItem]], list[W]],
    ) -> None:
        self._owner, self._group, self._taken, self._rest, self._prepare = owner, group, taken, rest, prepare

    def result(self) -> list[W]:
        """The group's work; items whose speculative fetch failed are prepared again here."""
        fetched = iter(self._rest.result() if self._rest is not None else ())
        works: dict[int, W] = {}
        again: list[ClaimedItem] = []
        for item in self._group:
            if item.seq not in self._taken:
                works[item.seq] = next(fetched)
                continue
            future, position = self._taken[item.seq]
            try:
                work = future.result()[position]
            except Exception as exc:  # a speculation never fails a chunk: fetch it as if never speculated
                log.debug("read-ahead of item %s failed (%s); fetching it again", item.key, exc)
                again.append(item)
                continue
            work.item = item  # the claim's row: attempts and `counted` are the claim's
            works[item.seq] = work
            self._owner.used += 1
        for work in self._prepare(again) if again else ():
            works[work.item.seq] = work
        return [works[item.seq] for item in self._group]

    def cancel(self) -> bool:
        """Cancel the fetches that have not started."""
        cancelled = [future.cancel() for future, _ in self._taken.values()]
        if self._rest is not None:
            cancelled.append(self._rest.cancel())
        return all(cancelled)
