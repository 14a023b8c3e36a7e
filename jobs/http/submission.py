"""A submission as the API takes it: the request's shape, and its checks before any job exists.

The checks are the CLI's (jobs.submit.ItemChecker, jobs.params, the input roots), run so that a refusal
names the field it is about, and for an inline item its index as the line. Two rules go further than the
CLI's, since the caller is not on the server's machine: a source and an output must lie inside the allowed
roots (the CLI's user may read and write whatever their account can), and an inline item's input is an
absolute path or a URL (a path relative to the server's folder means nothing to a remote caller).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from jobs.errors import InputNotAllowed, InvalidParameters, InvalidSource, OvisBatchError
from jobs.http.errors import ApiError
from jobs.inputs import InputRoots
from jobs.items import ITEM_PARAMS, ItemSpec
from jobs.lifecycle import JobKind
from jobs.outputs import output_location
from jobs.params import validate_params, validate_text
from jobs.settings import Settings
from jobs.submit import ItemChecker
from jobs.webhook import check_notify_url
from storage import is_within

#: Where a source's refusal names its line or row (jobs.sources: "<url> line 12: ...").
_SOURCE_LINE = re.compile(r" (?:line|row) (\d+): ")


class InlineItem(BaseModel):
    """One item given in the request, as a manifest's record would give it."""

    # Per-item parameters (seed, width, ...) sit beside these fields, as in a manifest; checked per kind.
    model_config = ConfigDict(extra="allow")

    #: The item's id (text, or an integer written as its decimal text); default: its input, else its index.
    id: str | None = None
    #: The input image (caption, edit): an absolute path or an s3:// URL inside the allowed input roots.
    input: StrictStr | None = None
    #: Caption question, generation prompt or edit instruction.
    prompt: StrictStr | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id_text(cls, value: Any) -> Any:
        # As in a manifest: an integer is its decimal text; a fraction or a boolean would not be what was
        # written, so is refused.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if value is None or isinstance(value, str):
            return value
        raise ValueError("an id is text or an integer")


class JobRequest(BaseModel):
    """`POST /v1/jobs`: a job of one kind from a source (`input`) or from items given inline (`items`)."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind
    #: A source as the CLI's --input takes it: a folder or s3:// prefix of images, a prompt file, a
    #: JSONL / CSV / Parquet manifest, or WebDataset tar shards. Exactly one of input and items.
    input: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    #: The items themselves, at most OVIS_BATCH_API_MAX_INLINE_ITEMS (default 10,000).
    items: list[InlineItem] | None = None
    #: Job parameters of the kind, as the CLI's options (seed, prompt, max_new_tokens, width, ...).
    params: dict[str, Any] = Field(default_factory=dict)
    #: 0 (lowest) to 9: higher runs first.
    priority: int = Field(default=0, ge=0, le=9)
    #: Storage URL for outputs (default: OVIS_BATCH_STORAGE_URL); inside the storage URL or an input root.
    output: StrictStr | None = Field(default=None, min_length=1, max_length=4096)
    #: http(s) URL to POST a signed notification to when the job ends (default: OVIS_BATCH_NOTIFY_URL).
    notify_url: StrictStr | None = None
    #: Reuse an earlier job's identical output instead of computing it again (the CLI's --skip-existing).
    skip_existing: bool = False


def refused(exc: OvisBatchError, field: str | None, line: int | None = None) -> ApiError:
    """`exc` as a 422 naming the field (and line) it is about."""
    return ApiError(422, exc.error_code, str(exc), field=field, line=line)


def check_request(request: JobRequest, settings: Settings) -> None:
    """The job-wide checks: one of input and items, parameters, the notification URL, the source's place.
    Items are checked by `inline_items`, the output (which it may make) by `check_output`."""
    if (request.input is None) == (request.items is None):
        raise ApiError(
            422, "invalid_parameters", "give either input (a source) or items, not both or neither"
        )
    _check_params(request.kind, request.params, settings)
    if request.notify_url is not None and request.notify_url.strip():
        try:
            check_notify_url(request.notify_url, settings.notify_allowed_hosts)
        except InvalidParameters as exc:
            raise refused(exc, "notify_url") from None
    roots = settings.allowed_input_roots
    if request.input is not None and not InputRoots(roots).allows(request.input):
        outside = InputNotAllowed(
            f"{request.input} is outside the allowed input roots ({', '.join(roots)}); set "
            "OVIS_BATCH_INPUT_ROOTS to allow it"
        )
        raise refused(outside, "input")


def _check_params(kind: JobKind, params: dict[str, Any], settings: Settings) -> None:
    try:
        validate_params(kind, params)
    except InvalidParameters as exc:
        raise refused(exc, f"params.{_param_at_fault(kind, params)}") from None
    prompt = params.get("prompt")
    if isinstance(prompt, str):
        try:
            validate_text(prompt, max_chars=settings.max_prompt_chars, what="params.prompt", required=True)
        except InvalidParameters as exc:
            raise refused(exc, "params.prompt") from None


def _param_at_fault(kind: JobKind, params: dict[str, Any]) -> str:
    """The name of the first parameter refused on its own (the model forbids unknown names, checks ranges)."""
    for name, value in params.items():
        try:
            validate_params(kind, {name: value})
        except InvalidParameters:
            return name
    return next(iter(params), "")


def check_output(output: str, settings: Settings) -> str:
    """The output location as stored, if it lies inside the storage URL or an allowed root and can be
    written; a 422 naming `output` if not. Confined before anything is made there."""
    roots = [settings.resolved_storage_url, *settings.allowed_input_roots]
    if not is_within(output, roots):
        outside = InvalidParameters(
            f"output {output} is outside the storage URL and the allowed roots ({', '.join(roots)})"
        )
        raise refused(outside, "output")
    try:
        return output_location(output, settings)
    except InvalidParameters as exc:
        raise refused(exc, "output") from None


def inline_items(request: JobRequest, settings: Settings) -> list[ItemSpec]:
    """The request's items checked as a manifest's would be; a refusal names the item's index as its line
    and its field."""
    items = request.items or []
    if not items:
        raise ApiError(
            422, InvalidSource.error_code, "items is empty: a job needs at least one", field="items"
        )
    if len(items) > settings.api_max_inline_items:
        raise ApiError(
            422,
            "invalid_parameters",
            f"{len(items)} items given inline; at most {settings.api_max_inline_items} are "
            "(OVIS_BATCH_API_MAX_INLINE_ITEMS): give a larger job as a manifest (input)",
            field="items",
        )
    check = ItemChecker(request.kind, settings)
    seen: dict[str, int] = {}
    specs: list[ItemSpec] = []
    for line, item in enumerate(items):
        spec = _spec(request.kind, item, line)
        _check_item(check, spec, item, line)
        first = seen.setdefault(spec.key, line)
        if first != line:
            raise ApiError(
                422,
                InvalidSource.error_code,
                f"item {spec.key!r} is the id of item {first} too; item ids must be unique within a job",
                field=f"items.{line}.id",
                line=line,
            )
        specs.append(spec)
    return specs


def _spec(kind: JobKind, item: InlineItem, line: int) -> ItemSpec:
    """The item as a source would yield it: its id, input, prompt and per-item parameters."""
    extra = {name: value for name, value in (item.model_extra or {}).items() if value is not None}
    unknown = sorted(set(extra) - ITEM_PARAMS[kind])
    if unknown:
        raise ApiError(
            422,
            "invalid_parameters",
            f"unknown field {unknown[0]!r}: an item of a {kind.value} job has id, input, prompt and "
            f"{', '.join(sorted(ITEM_PARAMS[kind]))}",
            field=f"items.{line}.{unknown[0]}",
            line=line,
        )
    source = item.input or ""
    if source and "://" not in source and not source.startswith("/"):
        raise ApiError(
            422,
            "invalid_parameters",
            f"input {source!r} is a relative path: give an absolute path or an s3:// URL",
            field=f"items.{line}.input",
            line=line,
        )
    key = item.id or source or f"{line:06d}"
    return ItemSpec(key=key, source=source, text=item.prompt or "", params=extra or None)


def _check_item(check: ItemChecker, spec: ItemSpec, item: InlineItem, line: int) -> None:
    # The checker's own steps, in its order, each under the field it reads.
    id_field = "input" if not item.id and spec.source else "id"
    steps = ((id_field, check.check_id), ("input", check.check_input), ("prompt", check.check_text))
    for field, step in steps:
        try:
            step(spec)
        except OvisBatchError as exc:
            raise refused(exc, f"items.{line}.{field}", line) from None
    try:
        check.check_params(spec)
    except OvisBatchError as exc:
        name = _param_at_fault(check.kind, spec.params or {})
        raise refused(exc, f"items.{line}.{name}", line) from None


def source_refusal(exc: OvisBatchError) -> ApiError:
    """A refusal met while the source was read, naming `input` and the line or row the message names."""
    match = _SOURCE_LINE.search(str(exc))
    return refused(exc, "input", int(match.group(1)) if match else None)
