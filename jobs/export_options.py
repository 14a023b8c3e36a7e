"""What an export is asked to write (ExportOptions) and what it wrote (ExportReport), in every format."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.errors import InvalidParameters
from jobs.lifecycle import ItemStatus
from storage import MAX_PRESIGN_SECONDS

FORMATS = ("jsonl", "parquet", "txt", "manifest")
#: Rows fetched per round trip (a server-side cursor on PostgreSQL).
ROWS_PER_FETCH = 10_000


@dataclass(frozen=True)
class ExportOptions:
    """What to export."""

    #: One of FORMATS.
    fmt: str = "jsonl"
    #: Only items in these states (all when empty), e.g. ("succeeded",).
    statuses: tuple[str, ...] = ()
    #: `manifest`: the name of the added column (default: jobs.export_manifest.OUTPUT_COLUMNS by job kind).
    column: str | None = None
    #: Add a presigned link to each output in S3, valid this many seconds (jobs.export_rows).
    presign: int | None = None

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            choices = ", ".join(FORMATS)
            raise InvalidParameters(f"unknown export format {self.fmt!r}; choose one of: {choices}")
        if self.presign is not None:
            if self.fmt == "txt":
                raise InvalidParameters("--presign adds a column: export jsonl, parquet or manifest")
            if not 1 <= self.presign <= MAX_PRESIGN_SECONDS:
                raise InvalidParameters(
                    f"--presign {self.presign}: a link lives 1 to {MAX_PRESIGN_SECONDS} seconds (7 days, "
                    "S3's limit)"
                )
        known = {status.value for status in ItemStatus}
        for status in self.statuses:
            if status not in known:
                raise InvalidParameters(f"unknown item state {status!r}; states: {', '.join(sorted(known))}")


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote, in the units of its format."""

    #: Rows (jsonl, parquet), manifest records, or caption files written.
    count: int
    #: What `count` counts, singular: "row", "record" or "caption file".
    unit: str
    #: The file written, or the folder the files went under; None for caption files beside the images.
    destination: str | None
    #: Files written.
    files: int = 1

    def describe(self) -> str:
        """One line for the person who ran the export."""
        counted = f"{self.count} {self.unit}{'' if self.count == 1 else 's'}"
        if self.destination is None:
            return f"wrote {counted} beside the images"
        if self.unit == "caption file":
            return f"wrote {counted} under {self.destination}"
        if self.files == 1:
            return f"wrote {counted} to {self.destination}"
        return f"wrote {counted} in {self.files} files under {self.destination}"
