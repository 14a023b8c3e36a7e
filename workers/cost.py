"""The model time a worker spends, recorded with each micro-batch's results (jobs/cost.py keeps the figures),
under a worker name that stays the same across restarts."""

from __future__ import annotations

import os
from functools import cache

from sqlalchemy.orm import Session

from jobs.cost import record_gpu_seconds
from workers.launcher import node_name


@cache
def fleet_name() -> str:
    """This worker's name in the per-worker figures: `ovis-gpu<N>@host` for the one GPU the launcher gave
    it, else `ovis@host`. Unlike a process id it survives restarts: there are as many as the fleet's GPUs."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return node_name(gpu if gpu and "," not in gpu else None)


def record_model_time(
    session: Session, *, job_id: str, kind: str, gpu_seconds: dict[int, float], ended: int
) -> None:
    """Add a micro-batch's model seconds to its items, its job and this worker, with the items it ended."""
    record_gpu_seconds(
        session, job_id=job_id, kind=kind, worker=fleet_name(), seconds=gpu_seconds, ended=ended
    )
