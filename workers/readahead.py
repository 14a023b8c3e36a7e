"""Read-ahead: the first micro-batch of a job's next chunk, fetched and decoded while the current chunk ends.

Chunks of a job are dispatched in seq order, so the items after a chunk's range most likely make the next
chunk this worker runs; but where several workers share the queue, another one often runs that chunk. So the
items read ahead are claimed for this worker (`jobs.state.claim_next_items`): the chunk that covers them,
wherever it runs, leaves them alone, and this worker's next chunk of the same job runs them with its own
items. Nothing is fetched twice.

Claimed items are handed back (to the queue, with their attempt taken back, and published again as a chunk of
their own) when the next chunk is of another job or kind, or when no chunk comes within `hold_s` of the end of
the chunk that claimed them (the job's last chunks went to other workers, or the worker is stopping). What
was prepared is then still kept as a speculation: a chunk of this worker that claims those items takes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
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


#: Seconds items claimed ahead wait for this worker's next chunk after the chunk that claimed them ended. A
#: worker that has its next message waiting starts it within milliseconds.
HOLD_S = 0.5

#: What hands claimed items back: (job_id, kind, priority, items).
GiveBack = Callable[[str, str, int, list[ClaimedItem]], None]


@dataclass
class _Held(Generic[W]):
    job_id: str
    kind: str
    #: Items in seq order, in the groups they were handed to the I/O threads in, with each group's future.
    groups: list[tuple[Sequence[ClaimedItem], Future[list[W]]]]
    #: Whether the items are claimed for this worker (else only read: a speculation).
    owned: bool = False
    priority: int = 0
    timer: threading.Timer | None = field(default=None, repr=False)

    @property
    def items(self) -> list[ClaimedItem]:
        return [item for group, _ in self.groups for item in group]

    def drop(self) -> None:
        """Cancel what has not started and the hand-back timer."""
        if self.timer is not None:
            self.timer.cancel()
        for _, future in self.groups:
            future.cancel()


def _failed(future: Future[list[W]]) -> bool:
    return future.done() and (future.cancelled() or future.exception() is not None)


class ReadAhead(Generic[W]):
    """What a worker holds ahead: set by the bookkeeping thread, taken by the next chunk."""

    def __init__(self, give_back: GiveBack | None = None, hold_s: float = HOLD_S) -> None:
        self._lock = threading.Lock()
        self._held: _Held[W] | None = None
        self._give_back = give_back
        self.hold_s = hold_s

    def hold(
        self,
        job_id: str,
        kind: str,
        groups: Sequence[tuple[Sequence[ClaimedItem], Future[list[W]]]],
        *,
        owned: bool = False,
        priority: int = 0,
    ) -> None:
        """Keep new prepared work, its items claimed for this worker if `owned`; what was held is dropped
        (and handed back if it was claimed)."""
        with self._lock:
            old, self._held = self._held, _Held(job_id, kind, list(groups), owned, priority)
        if old is not None:
            self._drop(old)

    def prepare(
        self,
        job_id: str,
        kind: str,
        priority: int,
        groups: Sequence[Sequence[ClaimedItem]],
        pool: Executor,
        prepare: Callable[[Sequence[ClaimedItem]], list[W]],
    ) -> None:
        """Hold items claimed ahead for this worker, handed to the I/O threads in `groups`; hand them back at
        once if those threads were shut down (the worker is stopping)."""
        try:
            prepared = [(group, pool.submit(prepare, group)) for group in groups]
        except RuntimeError:
            self._hand_back(job_id, kind, priority, [item for group in groups for item in group])
            return
        self.hold(job_id, kind, prepared, owned=True, priority=priority)

    def take(self, job_id: str, kind: str, items: Sequence[ClaimedItem]) -> Taken[W]:
        """The held work for a chunk of `job_id` and `kind` that claimed `items`: all of it when it is claimed
        for this worker (`Taken.owned` lists the items the chunk then runs besides its own), else the work of
        the claimed `items`. Work of another job or kind is dropped, claimed items handed back.

        Groups whose fetch already failed are left out, so that their items are fetched again as usual.
        """
        with self._lock:
            held, self._held = self._held, None
        if held is None:
            return Taken({})
        if held.timer is not None:
            held.timer.cancel()
        if (held.job_id, held.kind) != (job_id, kind):
            self._drop(held)
            return Taken({})
        if held.owned:
            claimed = {item.seq: item for item in held.items}
            owned = list(claimed.values())
        else:
            claimed = {item.seq: item for item in items}
            owned = []
        found: dict[int, tuple[Future[list[W]], int]] = {}
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
        return Taken(found, owned)

    def holds(self, job_id: str) -> bool:
        """Whether items of `job_id` are held claimed for this worker."""
        with self._lock:
            return self._held is not None and self._held.owned and self._held.job_id == job_id

    def chunk_ended(self) -> None:
        """Start the wait for the next chunk: claimed items not taken within `hold_s` are handed back."""
        with self._lock:
            held = self._held
            if held is None or not held.owned or held.timer is not None:
                return
            held.timer = threading.Timer(self.hold_s, self._expire, args=(held,))
            held.timer.daemon = True
            held.timer.start()

    def _expire(self, held: _Held[W]) -> None:
        with self._lock:
            if self._held is not held or not held.owned:
                return
            held.owned = False  # what was prepared stays, as a speculation
        self._hand_back(held.job_id, held.kind, held.priority, held.items)

    def _drop(self, held: _Held[W]) -> None:
        held.drop()
        if held.owned:
            self._hand_back(held.job_id, held.kind, held.priority, held.items)

    def _hand_back(self, job_id: str, kind: str, priority: int, items: list[ClaimedItem]) -> None:
        if not items:
            return
        if self._give_back is None:
            log.warning("%d items of job %s read ahead are left to their lease", len(items), job_id)
            return
        self._give_back(job_id, kind, priority, items)


class Taken(Generic[W]):
    """The prepared work a chunk took from the read-ahead, by seq; `used` counts the items it served."""

    def __init__(
        self, found: dict[int, tuple[Future[list[W]], int]], owned: Sequence[ClaimedItem] = ()
    ) -> None:
        self._found = found
        #: Items claimed ahead for this worker, which the chunk runs besides those it claimed.
        self.owned = list(owned)
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
