"""Cores for the pool processes of a prefork worker: each process runs its threads on its own share.

The I/O threads of one process decode on whichever core is free; on several cores at once they hand the
interpreter lock back and forth between cores at every system call and decode, which costs more CPU than the
parallel part of the decode saves. A process kept on its own cores pays none of that, and the processes of
the pool still use every core.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

log = logging.getLogger(__name__)


def cpu_share(index: int, processes: int, cpus: Sequence[int]) -> list[int]:
    """The cores of pool process `index` of `processes`: an equal run of `cpus`, or one core taken in turn
    when there are more processes than cores."""
    if processes >= len(cpus):
        return [cpus[index % len(cpus)]]
    index %= processes
    return list(cpus[index * len(cpus) // processes : (index + 1) * len(cpus) // processes])


def pin_pool_process(index: int, processes: int) -> None:
    """Keep this process (and the threads it starts from now on) on its share of the cores it may use."""
    if processes < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpu_share(index, processes, cpus)
    os.sched_setaffinity(0, share)
    log.info("pool process %d of %d runs on cores %s", index, processes, ",".join(map(str, share)))
