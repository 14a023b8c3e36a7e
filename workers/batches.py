"""Running a micro-batch on the model, on the thread that drives it, and uploading its image outputs, each in
its item's format with its provenance embedded.

One bad item never fails its neighbours: a failing micro-batch runs each item alone to find the one that
fails, and out-of-memory halves the micro-batch on the same worker until it fits or a single item does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

import storage
from gpu_model import BackendInvalidRequest, BackendOutOfMemory, CaptionRequest, EditRequest, GenerateRequest
from jobs import errors
from jobs.keys import CONTENT_TYPES, DEFAULT_IMAGE_FORMAT, image_output_key
from jobs.lifecycle import JobKind
from workers.images import encode_output
from workers.prepare import Prepared, Request
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass
class Results:
    """A micro-batch's results, recorded by the ledger once the uploads of its image outputs end."""

    #: seq -> caption, or the future of an image output's URL.
    outputs: dict[int, Future[str] | str] = field(default_factory=dict)
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Outputs of earlier jobs the items take instead of running (`--skip-existing`).
    reused: dict[int, str] = field(default_factory=dict)
    fingerprints: dict[int, str] = field(default_factory=dict)
    #: How each output was made (jobs.provenance), recorded with it.
    provenance: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Model seconds per item: its share of each model call it was part of (jobs/cost.py).
    gpu_seconds: dict[int, float] = field(default_factory=dict)

    def charge(self, seqs: Sequence[int], seconds: float) -> None:
        """Split a model call's seconds evenly over the items in it."""
        share = seconds / max(1, len(seqs))
        for seq in seqs:
            self.gpu_seconds[seq] = self.gpu_seconds.get(seq, 0.0) + share

    def settle(self, job_id: str) -> tuple[dict[int, str], dict[int, tuple[str, str]]]:
        """Wait for the uploads; the outputs, and the failures with the items whose output storage refused
        for good (access, bucket) or could not be encoded added. A transient fault is raised: the chunk is
        handed back."""
        outputs: dict[int, str] = {}
        failures = dict(self.failures)
        for seq, value in self.outputs.items():
            try:
                outputs[seq] = value if isinstance(value, str) else value.result()
            except storage.StorageError as exc:
                failures[seq] = (exc.error_code, f"writing the output failed: {exc}")
                log.warning(
                    "an output of job %s was not written: %s: %s",
                    job_id,
                    exc.error_code,
                    exc,
                    extra={"job_id": job_id},
                )
            except errors.Transient:
                raise
            except Exception as exc:  # a bug encoding one image fails that item alone
                fields = {"job_id": job_id}
                log.error("an output of job %s was not written", job_id, exc_info=True, extra=fields)
                failures[seq] = (errors.INTERNAL_ERROR, f"writing the output failed: {exc!r}")
        return outputs, failures


class MicroBatches:
    """The model calls of one chunk, and the uploads of their image outputs to the job's output store."""

    def __init__(self, runtime: WorkerRuntime, kind: JobKind, job_id: str, output_url: str) -> None:
        self.rt = runtime
        self.kind, self.job_id, self.output_url = kind, job_id, output_url

    def run(self, prepared: Sequence[Prepared]) -> Results:
        """Run the items that need the model; the results of all, image outputs still uploading."""
        results = Results(
            failures={p.item.seq: p.error for p in prepared if p.error},
            reused={p.item.seq: p.reused for p in prepared if p.reused is not None},
            fingerprints={p.item.seq: p.fingerprint for p in prepared if p.fingerprint is not None},
            provenance={p.item.seq: p.provenance for p in prepared if p.reused and p.provenance},
        )
        runnable = [p for p in prepared if p.request is not None and p.reused is None]
        if runnable:
            self._run(runnable, results)
        return results

    def _run(self, prepared: list[Prepared], results: Results) -> None:
        # The watchdog blames a stall on the items in the model (workers/watchdog.py).
        self.rt.liveness.model_started([p.item.seq for p in prepared])
        try:
            outputs = self._call(prepared, results)
        except BackendOutOfMemory as exc:
            if len(prepared) == 1:
                item = prepared[0].item
                log.warning(
                    "item %s of job %s failed: %s: out of memory at batch 1",
                    item.key,
                    self.job_id,
                    errors.OUT_OF_MEMORY,
                    extra={"job_id": self.job_id, "item_id": item.key},
                )
                results.failures[item.seq] = (errors.OUT_OF_MEMORY, f"out of memory at batch 1: {exc}")
                return
            half = len(prepared) // 2
            log.warning(
                "out of memory at batch %d; retrying as %d + %d",
                len(prepared),
                half,
                len(prepared) - half,
                extra={"job_id": self.job_id},
            )
            self._run(prepared[:half], results)
            self._run(prepared[half:], results)
            return
        except errors.Transient:
            raise
        except Exception as exc:
            if len(prepared) > 1:  # find the item that fails by running each alone
                for one in prepared:
                    self._run([one], results)
                return
            item = prepared[0].item
            fields = {"job_id": self.job_id, "item_id": item.key}
            code = getattr(exc, "error_code", errors.INTERNAL_ERROR)
            if isinstance(exc, BackendInvalidRequest):  # the request, not the system: one line, no traceback
                log.warning(
                    "item %s of job %s failed: %s: %s", item.key, self.job_id, code, exc, extra=fields
                )
            else:
                log.error("item %s of job %s failed", item.key, self.job_id, exc_info=True, extra=fields)
            results.failures[item.seq] = (code, f"{exc.__class__.__name__}: {exc}")
            return
        for p, output in zip(prepared, outputs, strict=True):
            made = dict(p.provenance or {})
            if isinstance(output, str):
                results.outputs[p.item.seq] = output
            else:
                made |= {"width": output.width, "height": output.height}
                upload = self.rt.io_pool.submit(self._upload, p, output, made)
                results.outputs[p.item.seq] = upload
            if made:
                results.provenance[p.item.seq] = made

    def _call(self, prepared: list[Prepared], results: Results) -> Sequence[str | Image.Image]:
        """The model's outputs for `prepared`; the call's time is charged to its items, whatever its end."""
        began = time.perf_counter()
        try:
            return self._call_backend([p.request for p in prepared if p.request is not None])
        finally:
            self.rt.liveness.model_ended()
            results.charge([p.item.seq for p in prepared], time.perf_counter() - began)

    def _call_backend(self, requests: Sequence[Request]) -> Sequence[str | Image.Image]:
        backend = self.rt.backend
        outputs: Sequence[str | Image.Image]
        if self.kind is JobKind.CAPTION:
            outputs = backend.caption([r for r in requests if isinstance(r, CaptionRequest)])
        elif self.kind is JobKind.GENERATE:
            outputs = backend.generate([r for r in requests if isinstance(r, GenerateRequest)])
        else:
            outputs = backend.edit([r for r in requests if isinstance(r, EditRequest)])
        if len(outputs) != len(requests):
            raise RuntimeError(f"backend returned {len(outputs)} results for {len(requests)} requests")
        return outputs

    def _upload(self, p: Prepared, image: Image.Image, provenance: dict[str, Any]) -> str:
        """Runs on an I/O thread; a transient fault of the store hands the chunk back when it is recorded."""
        image_format = p.image_format or DEFAULT_IMAGE_FORMAT
        key = image_output_key(self.job_id, p.item.key, image_format)
        data = encode_output(image, image_format, p.quality, provenance)
        try:
            return self.rt.store(self.output_url).write(key, data, CONTENT_TYPES[image_format])
        except storage.StorageUnavailable as exc:
            raise errors.StorageUnavailable(str(exc)) from exc
