"""Hand-backs the database refused: kept by the worker, and made as soon as the database answers again.

A chunk stopped by a fault hands its unfinished items back to the queue, the attempts it counted taken back.
When the fault is the database itself, that hand-back fails too. Left alone, the items would stay leased to
this live worker, unseen by every other, until their lease ran out, and the lease's expiry would charge them
an attempt they never used: a few database restarts would quarantine healthy items. The worker keeps such
hand-backs instead, and a thread of its own tries them again every `RETRY_S` seconds until the database takes
them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

#: Seconds between tries of the kept hand-backs while the database is away.
RETRY_S = 1.0


@dataclass(frozen=True)
class HandBack:
    """Running items of one job to put back in the queue."""

    job_id: str
    kind: str
    priority: int
    seqs: tuple[int, ...]
    #: Items whose attempt this worker counted and takes back: the fault was not theirs.
    uncount: tuple[int, ...]
    #: Items to publish again once handed back (the others come back with their chunk's own message).
    publish: tuple[int, ...]


class PendingHandBacks:
    """Hand-backs kept while the database is away, tried again by a thread until it takes them."""

    def __init__(self, hand_back: Callable[[HandBack], None], retry_s: float = RETRY_S) -> None:
        self._hand_back = hand_back
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._pending: list[HandBack] = []
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def keep(self, handback: HandBack) -> None:
        """Keep a hand-back the database refused; a thread tries it again until the database takes it."""
        with self._lock:
            self._pending.append(handback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._retry, name="ovis-handback", daemon=True)
                self._thread.start()

    def flush(self) -> int:
        """Try the kept hand-backs in order, up to one the database refuses; return how many were made."""
        made = 0
        while True:
            with self._lock:
                if not self._pending:
                    return made
                handback = self._pending[0]
            try:
                self._hand_back(handback)
            except SQLAlchemyError as exc:
                log.debug("the database still refuses hand-backs: %s", exc.__class__.__name__)
                return made
            except Exception:
                log.exception(
                    "handing back %d items of job %s failed; their lease expires instead",
                    len(handback.seqs),
                    handback.job_id,
                    extra={"job_id": handback.job_id},
                )
                with self._lock:
                    self._pending.remove(handback)
                continue
            with self._lock:
                self._pending.remove(handback)
            made += 1
            log.info(
                "handed back %d items of job %s kept while the database was unavailable",
                len(handback.seqs),
                handback.job_id,
                extra={"job_id": handback.job_id},
            )

    def _retry(self) -> None:
        while True:
            time.sleep(self.retry_s)
            self.flush()
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
