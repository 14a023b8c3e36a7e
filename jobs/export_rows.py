"""The columns an export adds to each item's own: how its output was made (jobs.provenance) and, with
`--presign SECONDS`, a link that fetches the output over HTTP(S) until it expires.

Row exports (JSONL, Parquet, `results.jsonl`) name them as jobs.provenance does (`seed`, `steps`, ...), and
the link `output_https`; manifest exports add them as `ovis_seed`, `ovis_steps`, ..., `ovis_output_https`,
columns of ovis-batch's own that a later export replaces. An item without provenance (not succeeded, or
recorded before provenance was) has them empty; only outputs in S3 get a link, local files none (empty).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobs.errors import InvalidParameters
from jobs.lifecycle import JobKind
from jobs.provenance import FIELD_TYPES, FIELDS, columns
from storage import S3Options, presign_url

if TYPE_CHECKING:
    import pyarrow as pa

#: The column of presigned links.
LINK_COLUMN = "output_https"


class ExtraColumns:
    """The provenance columns of a job's kind, and the link column with `presign`, named with `prefix`."""

    def __init__(
        self,
        kind: str,
        *,
        prefix: str = "",
        presign: int | None = None,
        s3: S3Options | None = None,
        with_prompt: bool = False,
    ) -> None:
        if presign is not None and kind == JobKind.CAPTION.value:
            raise InvalidParameters(
                "--presign links image outputs; a caption job's outputs are the captions in its rows"
            )
        #: Provenance fields, by their names in jobs.provenance (the row's own `prompt` column holds the
        #: prompt unless `with_prompt`).
        self.fields = FIELDS[kind] if with_prompt else columns(kind)
        self.prefix = prefix
        self.presign, self.s3 = presign, s3
        self.link = prefix + LINK_COLUMN if presign is not None else None
        #: The columns added, in order.
        self.names = tuple(prefix + name for name in self.fields) + ((self.link,) if self.link else ())

    def values(self, output: str | None, provenance: dict[str, Any] | None) -> dict[str, Any]:
        """The added columns of one item, from its output and its recorded provenance."""
        made = provenance or {}
        values = {self.prefix + name: made.get(name) for name in self.fields}
        if self.link is not None:
            values[self.link] = self._link(output)
        return values

    def _link(self, output: str | None) -> str | None:
        if not output or self.presign is None:
            return None
        return presign_url(output, self.presign, self.s3)

    def arrow_fields(self) -> list[pa.Field]:
        """The added columns as Parquet fields: numbers stay numbers."""
        import pyarrow as pa

        types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
        fields = [pa.field(self.prefix + name, types[FIELD_TYPES[name]]) for name in self.fields]
        if self.link is not None:
            fields.append(pa.field(self.link, pa.string()))
        return fields


def row_prompt(text: str, provenance: dict[str, Any] | None) -> str:
    """The prompt a row shows: the one the model got where recorded (a caption job's default prompt, too),
    else the item's own."""
    if provenance and provenance.get("prompt") is not None:
        return str(provenance["prompt"])
    return text
