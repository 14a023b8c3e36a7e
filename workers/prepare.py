"""Preparing a chunk's inputs on the I/O threads: fetch inside the allowed roots, decode, build the request.

Whatever goes wrong with one item ends that item alone: bad input with its own code, logged as one WARNING
line; anything else as internal_error, logged at ERROR with its traceback. Only a transient fault is raised:
the chunk is handed back and retried. With `--skip-existing`, each group of items looks up the earlier outputs
made from the same (workers/reuse.py). Each item's provenance (jobs.provenance) is taken from its request as
the model gets it: the backend's defaults, the job's parameters and the item's own, resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

import storage
from gpu_model import CaptionRequest, EditRequest, GenerateRequest
from jobs import errors
from jobs.db import session_scope
from jobs.inputs import read_allowed_input
from jobs.lifecycle import JobKind
from jobs.params import item_seed, output_format, resolve
from jobs.state import ClaimedItem
from workers.images import decode_image
from workers.reuse import find_reusable, fingerprint, input_digest, model_identity, version
from workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

Request = CaptionRequest | GenerateRequest | EditRequest


@dataclass
class Prepared:
    """An item ready for the model, or why it cannot run."""

    item: ClaimedItem
    request: Request | None = None
    error: tuple[str, str] | None = None
    #: What the item's output is made from (workers.reuse), and an earlier output made from the same.
    fingerprint: str | None = None
    reused: str | None = None
    #: How the output is made (jobs.provenance); an image's size is added once it is made.
    provenance: dict[str, Any] | None = None
    #: What an image output is written as (None for captions).
    image_format: str | None = None
    quality: int | None = None


class Inputs:
    """The inputs of one chunk's items, with what the chunk reads once for all of them: the job's
    parameters over the backend's defaults, the input roots, the limits and the model's identity."""

    def __init__(
        self,
        runtime: WorkerRuntime,
        kind: JobKind,
        job_id: str,
        *,
        params: dict[str, Any],
        output_url: str,
        reuse_outputs: bool,
    ) -> None:
        self.rt = runtime
        self.settings = runtime.settings
        self.kind, self.job_id = kind, job_id
        self.job_params, self.output_url, self.reuse_outputs = params, output_url, reuse_outputs
        self.base_params = resolve(kind, params, None, runtime.info.defaults.get(kind.value, {}))
        self.model = model_identity(self.settings)
        #: What every item's provenance says of the model.
        self.made_by = {
            "model": self.settings.model_path,
            "model_revision": self.settings.model_revision,
            "backend": self.settings.backend,
            "version": version(),
        }
        # Read once per chunk, not once per item (the roots' default looks up the working directory).
        self.input_roots = tuple(self.settings.allowed_input_roots)
        self.s3 = self.settings.s3_options()

    def prepare_group(self, items: Sequence[ClaimedItem]) -> list[Prepared]:
        """Prepare a few items in turn on one I/O thread: one task and one future per group, not per item;
        with `--skip-existing`, find earlier outputs made from the same (one query per group)."""
        prepared = [self.prepare(item) for item in items]
        prints = {p.fingerprint for p in prepared if p.fingerprint is not None}
        if self.reuse_outputs and prints:
            with session_scope(self.settings.resolved_database_url) as session:
                found = find_reusable(
                    session,
                    job_id=self.job_id,
                    fingerprints=prints,
                    images=self.kind is not JobKind.CAPTION,
                    s3=self.s3,
                )
            for p in prepared:
                if p.fingerprint in found:
                    p.reused, p.provenance = found[p.fingerprint]
        self.rt.liveness.beat()
        return prepared

    def prepare(self, item: ClaimedItem) -> Prepared:
        """Fetch, decode and build the request of one item; errors.Transient is the one exception raised."""
        try:
            image, digest = (
                self._load_image(item.source) if self.kind is not JobKind.GENERATE else (None, None)
            )
            params = self._params(item.params)
            request = self._request(item, params, image)
            image_format, quality = (
                output_format(params) if self.kind is not JobKind.CAPTION else (None, None)
            )
            made_of = fingerprint(
                kind=self.kind.value,
                request=request,
                input_digest=digest,
                model=self.model,
                output_url=self.output_url,
                image_format=image_format,
                quality=quality,
            )
            return Prepared(
                item,
                request=self.rt.backend.prepare(request),
                fingerprint=made_of,
                provenance=self._provenance(request, image_format, quality),
                image_format=image_format,
                quality=quality,
            )
        except errors.Transient:
            raise
        except errors.BadInput as exc:
            log.warning(
                "item %s of job %s failed: %s: %s",
                item.key,
                self.job_id,
                exc.error_code,
                exc,
                extra={"job_id": self.job_id, "item_id": item.key},
            )
            return Prepared(item, error=(exc.error_code, str(exc)))
        except Exception as exc:  # MemoryError and RecursionError too: no input ends the chunk or the worker
            log.error(
                "item %s of job %s failed while its input was prepared",
                item.key,
                self.job_id,
                exc_info=True,
                extra={"job_id": self.job_id, "item_id": item.key},
            )
            detail = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
            return Prepared(item, error=(errors.INTERNAL_ERROR, detail))

    def _load_image(self, url: str) -> tuple[Image.Image, str]:
        """The decoded input and a digest of its bytes (workers.reuse)."""
        # jobs.inputs reads plain objects and WebDataset tar members (`shard.tar#member@offset+size`).
        try:
            data = read_allowed_input(url, self.input_roots, self.s3, self.settings.max_image_bytes)
        except storage.ObjectNotFound:
            raise errors.InputMissing(f"{url} does not exist") from None
        except storage.StorageUnavailable as exc:
            raise errors.StorageUnavailable(str(exc)) from exc
        except storage.StorageError as exc:
            raise errors.InputMissing(f"{url} cannot be read: {exc}") from None
        image = decode_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        return image, input_digest(data)

    def _params(self, overrides: dict[str, Any] | None) -> dict[str, Any]:
        """The chunk's parameters with an item's overrides on top."""
        if not overrides:
            return self.base_params
        return resolve(self.kind, {}, overrides, self.base_params)

    def _provenance(self, request: Request, image_format: str | None, quality: int | None) -> dict[str, Any]:
        """The item's provenance as far as it is known before the model runs (jobs.provenance)."""
        if isinstance(request, CaptionRequest):
            made: dict[str, Any] = {
                "prompt": request.prompt,
                "seed": request.seed,
                "max_new_tokens": request.max_new_tokens,
                "temperature": request.temperature,
                "max_pixels": request.max_pixels,
            }
        elif isinstance(request, GenerateRequest):
            made = {"prompt": request.prompt, "seed": request.seed, "steps": request.steps}
            made |= {"txt_cfg": request.txt_cfg, "width": request.width, "height": request.height}
        else:
            made = {"prompt": request.instruction, "seed": request.seed, "steps": request.steps}
            # The size follows the input: known once the model made the image (workers.batches).
            made |= {"txt_cfg": request.txt_cfg, "img_cfg": request.img_cfg, "width": None, "height": None}
        if image_format is not None:
            made |= {"image_format": image_format, "quality": quality}
        return {"kind": self.kind.value, **made, **self.made_by}

    def _request(self, item: ClaimedItem, p: dict[str, Any], image: Image.Image | None) -> Request:
        seed = (item.params or {}).get("seed")
        seed = int(seed) if seed is not None else item_seed(int(self.job_params.get("seed", 0)), item.key)
        if self.kind is JobKind.CAPTION:
            assert image is not None
            return CaptionRequest(
                image=image,
                prompt=item.text or p["prompt"],
                max_new_tokens=p["max_new_tokens"],
                temperature=float(p.get("temperature", 0.0)),
                seed=seed,
                # 0 (an item undoing its job's cap) and unset both leave the model's own bound.
                max_pixels=int(p.get("max_pixels") or 0) or None,
            )
        if self.kind is JobKind.GENERATE:
            return GenerateRequest(
                prompt=item.text,
                width=p["width"],
                height=p["height"],
                steps=p["steps"],
                seed=seed,
                txt_cfg=float(p["txt_cfg"]),
            )
        assert image is not None
        return EditRequest(
            image=image,
            instruction=item.text,
            steps=p["steps"],
            seed=seed,
            img_cfg=float(p["img_cfg"]),
            txt_cfg=float(p["txt_cfg"]),
        )
