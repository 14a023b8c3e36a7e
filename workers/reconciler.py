"""The reconciler as a background thread of every worker: a pass every `reconcile_interval_s` seconds."""

from __future__ import annotations

import logging
import random
import threading

from jobs.dispatch import CeleryDispatcher
from jobs.reconcile import reconcile
from jobs.settings import Settings

log = logging.getLogger(__name__)


def _loop(settings: Settings, stop: threading.Event) -> None:
    # Jitter spreads the passes of many workers; a pass is idempotent, so overlaps are harmless.
    dispatcher = CeleryDispatcher(settings)  # one broker connection pool for the thread's whole life
    while not stop.wait(settings.reconcile_interval_s * random.uniform(0.75, 1.25)):
        try:
            report = reconcile(settings, dispatcher)
            if report.expired or report.redispatched or report.finalized or report.exported:
                log.info(
                    "reconciler: %d leases expired, %d items re-dispatched, %d jobs finalized, %d results "
                    "files written",
                    report.expired,
                    report.redispatched,
                    len(report.finalized),
                    len(report.exported),
                )
        except Exception:
            log.warning("reconciler pass failed; trying again next interval", exc_info=True)


def start_reconciler(settings: Settings) -> threading.Event | None:
    """Start the periodic reconciler thread unless disabled (interval 0); return its stop event."""
    if settings.reconcile_interval_s <= 0:
        return None
    stop = threading.Event()
    threading.Thread(target=_loop, args=(settings, stop), name="ovis-reconciler", daemon=True).start()
    return stop
