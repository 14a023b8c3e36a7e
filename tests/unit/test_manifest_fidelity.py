"""Manifests and prompt files give exactly what the user wrote: one item per record, ids and texts as
written (byte order marks, CRLF, dates, numbers, binary Parquet columns), bad text refused naming the file
and line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.errors import InvalidSource
from jobs.lifecycle import JobKind
from jobs.sources import iter_source
from jobs.submit import ItemChecker
from tests.helpers import embedded_settings

#: Text that a reader inferring types would turn into something else, or that a careless split would cut.
TRICKY = [
    "2024-01-01",
    "2024-01-01T10:00:00",
    "007",
    "1e3",
    "1.0",
    "true",
    "null",
    "NaN",
    " padded ",
    "a,b",
    'say "cheese"',
    "two\nlines",
    "crlf\r\ninside",
    "tab\there",
    "\ufeffbom inside",
    "caf\u00e9 \U0001f600",
    "line\u2028separator",
    "{}",
]
# Any text but NUL and lone surrogates, which are refused (tested below).
TEXT = st.one_of(
    st.sampled_from(TRICKY),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1),
)
RECORDS = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=30)
FORMATS = ["jsonl", "jsonl-ascii", "jsonl.gz", "csv", "csv-lf", "csv.gz", "parquet", "parquet-binary"]


def _write(folder: Path, fmt: str, records: list[tuple[str, str]], *, bom: bool, crlf: bool) -> Path:
    """`records` (id, prompt) as a manifest in `fmt`; text formats with a BOM and CRLF line ends if asked."""
    rows = [{"id": key, "prompt": prompt} for key, prompt in records]
    if fmt.startswith("parquet"):
        path = folder / "m.parquet"
        if fmt == "parquet-binary":
            columns = {
                name: pa.array([r[name].encode() for r in rows], pa.binary()) for name in ("id", "prompt")
            }
            pq.write_table(pa.table(columns), path)
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    end = "\r\n" if crlf else "\n"
    if fmt.startswith("jsonl"):
        text = "".join(json.dumps(r, ensure_ascii=fmt == "jsonl-ascii") + end for r in rows)
    else:
        buffer = io.StringIO()
        # Python's writer quotes a "\r" only where it is part of the line terminator: with "\n", quote all.
        quoting = csv.QUOTE_ALL if fmt == "csv-lf" else csv.QUOTE_MINIMAL
        writer = csv.DictWriter(buffer, ["id", "prompt"], lineterminator=end, quoting=quoting)
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    data = (("\ufeff" if bom else "") + text).encode()
    name = "m." + fmt.split("-")[0]
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path = folder / name
    path.write_bytes(data)
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, fmt=st.sampled_from(FORMATS), bom=st.booleans(), crlf=st.booleans())
def test_every_record_gives_one_item_with_its_id_and_prompt_as_written(
    records: list[tuple[str, str]], fmt: str, bom: bool, crlf: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), fmt, records, bom=bom, crlf=crlf)
        items = list(iter_source(JobKind.GENERATE, str(path)))
    assert [(item.key, item.text) for item in items] == records


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(
        st.text(st.characters(blacklist_categories=("Cs", "Zl", "Zp", "Cc"), blacklist_characters="\x00")),
        min_size=1,
        max_size=20,
    ),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_a_prompt_file_gives_each_non_blank_line_without_its_end(
    lines: list[str], bom: bool, crlf: bool
) -> None:
    end = "\r\n" if crlf else "\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.txt"
        path.write_bytes((("\ufeff" if bom else "") + "".join(line + end for line in lines)).encode())
        items = list(iter_source(JobKind.GENERATE, str(path)))
    expected = [(f"{n:06d}", line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    assert [(item.key, item.text) for item in items] == expected


def test_a_bom_is_not_part_of_the_first_field_name(tmp_path: Path) -> None:
    # Without the BOM removed the header's first name is "\ufeffid": the image paths became the ids.
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("\ufeffid,image\r\ncat-1,a.jpg\r\ncat-2,b.jpg\r\n".encode())
    items = list(iter_source(JobKind.CAPTION, str(manifest)))
    assert [(i.key, i.source) for i in items] == [
        ("cat-1", str(tmp_path / "a.jpg")),
        ("cat-2", str(tmp_path / "b.jpg")),
    ]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes('\ufeff{"id": "x", "image": "a.jpg"}\r\n'.encode())
    assert [i.key for i in iter_source(JobKind.CAPTION, str(jsonl))] == ["x"]


def test_json_ids_are_never_inferred_and_integers_are_their_decimal_text(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    records = [
        {"id": "2024-01-01", "prompt": "true"},
        {"id": 7, "prompt": "null"},
        {"id": -12345678901234567890, "prompt": "1.0"},
        {"id": None, "image": "from-image.jpg", "prompt": "2024-01-01T10:00:00"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    items = list(iter_source(JobKind.GENERATE, str(manifest)))
    assert [(i.key, i.text) for i in items] == [
        ("2024-01-01", "true"),
        ("7", "null"),
        ("-12345678901234567890", "1.0"),
        ("from-image.jpg", "2024-01-01T10:00:00"),
    ]
    # Every id a date: a reader inferring column types reads them as timestamps ("2024-01-01 00:00:00").
    manifest.write_text("".join(json.dumps({"id": f"2024-01-{d:02d}", "prompt": "p"}) + "\n" for d in (1, 2)))
    assert [i.key for i in iter_source(JobKind.GENERATE, str(manifest))] == ["2024-01-01", "2024-01-02"]


@pytest.mark.parametrize(
    ("value", "said"),
    [("1.0", "the number 1.0"), ("true", "the boolean true"), ('{"a": 1}', "an object"), ("[1]", "a list")],
)
def test_json_ids_other_than_text_or_integers_are_refused(tmp_path: Path, value: str, said: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "ok", "prompt": "p"}\n{"id": ' + value + ', "prompt": "p"}\n')
    with pytest.raises(
        InvalidSource, match=rf"m\.jsonl line 2: field 'id' holds {said}; an id is text or an integer"
    ):
        list(iter_source(JobKind.GENERATE, str(manifest)))


def test_a_prompt_that_is_not_text_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "prompt": 5}\n')
    with pytest.raises(InvalidSource, match=r"line 1: field 'prompt' holds the number 5; it must be text"):
        list(iter_source(JobKind.GENERATE, str(manifest)))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"id": "a", "prompt": "p"}{"id": "b", "prompt": "q"}',
            r"more after the JSON object \('\{\"id\": \"b\"",
        ),
        ('{"id": "a", "prompt": "p"} x', r"more after the JSON object \('x'\)"),
        ('["a", "p"]', r"expected a JSON object, found a list"),
        ('"just text"', r"expected a JSON object, found a str"),
        ('{"id": "a", "prompt": "p", "seed": NaN}', r"not valid JSON \(NaN is not a JSON value\)"),
        ('{"id": "a", "prompt": "p"', r"not valid JSON"),
    ],
)
def test_a_line_that_is_not_one_json_object_names_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "first", "prompt": "p"}\n\n' + line + "\n")
    with pytest.raises(InvalidSource, match=re.escape(f"{tmp_path}/m.jsonl line 3: ") + message):
        list(iter_source(JobKind.GENERATE, str(manifest)))


def test_leading_spaces_and_blank_lines_are_not_records(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('  {"id": "a", "prompt": "p"}\n \t\r\n\n{"id": "b", "prompt": "q"}  \r\n')
    assert [i.key for i in iter_source(JobKind.GENERATE, str(manifest))] == ["a", "b"]


def test_every_record_counts_when_ids_change_type(tmp_path: Path) -> None:
    # A reader that infers a column type from the first records and starts again on a change lost records.
    manifest = tmp_path / "m.jsonl"
    lines = [json.dumps({"id": n, "prompt": f"p{n}"}) for n in range(30_000)] + [
        '{"id": "last", "prompt": "p"}'
    ]
    manifest.write_text("\n".join(lines))  # and no newline after the last record
    keys = [i.key for i in iter_source(JobKind.GENERATE, str(manifest))]
    assert keys == [str(n) for n in range(30_000)] + ["last"]


def test_a_first_line_holding_two_objects_is_refused_not_miscounted(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    lines = ['{"id": "a", "prompt": "p"} {"id": "b", "prompt": "q"}'] + [
        json.dumps({"id": f"n{n}", "prompt": "p"}) for n in range(3)
    ]
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidSource, match=r"m\.jsonl line 1: more after the JSON object"):
        list(iter_source(JobKind.GENERATE, str(manifest)))


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv", "p.txt", "m.jsonl.gz", "m.csv.gz"])
def test_invalid_utf8_is_refused_with_its_line(tmp_path: Path, name: str) -> None:
    lines = {
        "m.jsonl": [b'{"id": "a", "prompt": "p"}', b'{"id": "b", "prompt": "caf\xe9"}'],
        "m.csv": [b"id,prompt", b"b,caf\xe9"],
        "p.txt": [b"a fox", b"caf\xe9"],
    }[name.removesuffix(".gz")]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(
        InvalidSource, match=rf"{name} line 2: not valid UTF-8 \(byte 0xe9 at byte \d+ of the line\)"
    ):
        list(iter_source(JobKind.GENERATE, str(path)))


@pytest.mark.parametrize(
    ("name", "content", "where", "what"),
    [
        (
            "m.jsonl",
            '{"id": "a", "prompt": "p"}\n{"id": "b\\u0000", "prompt": "p"}\n',
            "line 2",
            "'id' holds a NUL",
        ),
        (
            "m.jsonl",
            '{"id": "a", "prompt": "p"}\n{"id": "b", "prompt": "x\\ud800"}\n',
            "line 2",
            "'prompt' holds a lone surrogate",
        ),
        (
            "m.jsonl",
            '{"id": "a", "image": "\\udfffa.jpg", "prompt": "p"}\n',
            "line 1",
            "'image' holds a lone surrogate",
        ),
        ("m.csv", 'id,prompt\na,p\nb,"x\x00y"\n', "line 3", "'prompt' holds a NUL"),
        ("p.txt", "a fox\n\na \x00 hen\n", "line 3", "holds a NUL"),
    ],
)
def test_nul_and_lone_surrogates_are_refused_with_file_and_line(
    tmp_path: Path, name: str, content: str, where: str, what: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidSource, match=rf"{name} {where}: (field )?{what}"):
        list(iter_source(JobKind.GENERATE, str(path)))


def test_control_characters_other_than_nul_are_kept_in_ids(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a\tb\x1f", "prompt": "p"}) + "\n")
    assert [i.key for i in iter_source(JobKind.GENERATE, str(manifest))] == ["a\tb\x1f"]


def test_csv_rows_must_have_the_header_s_fields(tmp_path: Path) -> None:
    manifest = tmp_path / "edits.csv"
    # An unquoted comma split the instruction: "please" would have been dropped.
    manifest.write_text("id,image,instruction\ne1,a.jpg,make it red\n\ne2,b.jpg,make it red, please\n")
    with pytest.raises(
        InvalidSource, match=r"edits\.csv line 4: 4 fields where the header has 3; a field that holds a comma"
    ):
        list(iter_source(JobKind.EDIT, str(manifest)))
    manifest.write_text("id,image,instruction\ne1,a.jpg\n")
    with pytest.raises(InvalidSource, match=r"line 2: 2 fields where the header has 3"):
        list(iter_source(JobKind.EDIT, str(manifest)))
    manifest.write_text("id,image,id\ne1,a.jpg,e2\n")
    with pytest.raises(InvalidSource, match=r"line 1: the header names id twice"):
        list(iter_source(JobKind.EDIT, str(manifest)))


def test_parquet_text_columns_string_or_binary_and_integer_ids(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([7, -1, 2**62], pa.int64()),
            "prompt": pa.array([b"2024-01-01", b"a red car", "caf\u00e9".encode()], pa.binary()),
            "caption": pa.array(["x", "y", "z"]).dictionary_encode(),
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    items = list(iter_source(JobKind.GENERATE, str(tmp_path / "m.parquet")))
    assert [(i.key, i.text) for i in items] == [
        ("7", "2024-01-01"),
        ("-1", "a red car"),
        (str(2**62), "caf\u00e9"),
    ]
    # A dictionary-encoded string column (pandas' category) is text too.
    pq.write_table(table.drop_columns(["prompt"]), tmp_path / "c.parquet")
    assert [i.text for i in iter_source(JobKind.GENERATE, str(tmp_path / "c.parquet"))] == ["x", "y", "z"]


def test_parquet_values_that_are_not_text_are_refused_by_row_and_field(tmp_path: Path) -> None:
    rows = pa.array([b"fine", b"caf\xe9"], pa.binary())
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": rows}), tmp_path / "binary.parquet")
    with pytest.raises(InvalidSource, match=r"binary\.parquet row 2: field 'prompt' is not valid UTF-8"):
        list(iter_source(JobKind.GENERATE, str(tmp_path / "binary.parquet")))
    # A string column whose bytes are not UTF-8 (a writer that did not check).
    pq.write_table(
        pa.table({"id": ["a", "b"], "prompt": rows.view(pa.string())}), tmp_path / "string.parquet"
    )
    with pytest.raises(InvalidSource, match=r"string\.parquet row 2: field 'prompt' is not valid UTF-8"):
        list(iter_source(JobKind.GENERATE, str(tmp_path / "string.parquet")))
    pq.write_table(pa.table({"id": [1.0, 2.0], "prompt": ["p", "q"]}), tmp_path / "float.parquet")
    with pytest.raises(InvalidSource, match=r"float\.parquet row 1: field 'id' holds the number 1\.0"):
        list(iter_source(JobKind.GENERATE, str(tmp_path / "float.parquet")))
    stamps = pa.array([0, 1], pa.timestamp("s"))
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": stamps}), tmp_path / "time.parquet")
    with pytest.raises(
        InvalidSource,
        match=r"time\.parquet row 1: field 'prompt' holds a datetime \(1970-01-01 00:00:00\); it must be",
    ):
        list(iter_source(JobKind.GENERATE, str(tmp_path / "time.parquet")))
    pq.write_table(pa.table({"id": ["a", "b\x00"], "prompt": ["p", "q"]}), tmp_path / "nul.parquet")
    with pytest.raises(InvalidSource, match=r"nul\.parquet row 2: field 'id' holds a NUL character"):
        list(iter_source(JobKind.GENERATE, str(tmp_path / "nul.parquet")))


@pytest.mark.parametrize(
    ("kind", "header", "row", "field", "owner"),
    [
        (JobKind.EDIT, "id,image,instruction,width", "e,a.jpg,blue,512", "width", "generate"),
        (JobKind.CAPTION, "id,image,steps", "c,a.jpg,20", "steps", "edit and generate"),
        (JobKind.GENERATE, "id,prompt,img_cfg", "g,a fox,1.5", "img_cfg", "edit"),
        (JobKind.CAPTION, "id,image,txt_cfg", "c,a.jpg,4", "txt_cfg", "edit and generate"),
    ],
)
def test_a_parameter_of_another_kind_is_refused_naming_it_and_what_the_kind_takes(
    tmp_path: Path, kind: JobKind, header: str, row: str, field: str, owner: str
) -> None:
    manifest = tmp_path / "m.csv"
    empty = ",".join(row.split(",")[:-1]) + ","
    manifest.write_text(f"{header}\n{empty}\n{row}\n")
    with pytest.raises(
        InvalidSource,
        match=rf"line 3: field '{field}' is a per-item parameter of {owner} jobs, not of {kind.value}",
    ) as error:
        list(iter_source(kind, str(manifest)))
    takes = {
        JobKind.CAPTION: "max_new_tokens, max_pixels, seed",
        JobKind.EDIT: "image_format, img_cfg, quality, seed, steps, txt_cfg",
    }
    assert takes.get(kind, "height, image_format, quality, seed, steps, txt_cfg, width") in str(error.value)
    # Empty in every record: nothing is lost, the manifest is read.
    manifest.write_text(f"{header}\n{empty}\n")
    assert len(list(iter_source(kind, str(manifest)))) == 1


def test_other_fields_are_ignored_and_named_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # img2dataset's per-shard Parquet: width / height are the original image's size, not output sizes; a
    # quality score and the file's format are facts about the image too (a caption job makes no image).
    table = pa.table(
        {
            "key": ["000000000", "000000001"],
            "path": ["a.jpg", "b.jpg"],
            "caption": ["a cat", "a dog"],
            "status": ["success", "success"],
            "width": pa.array([640, 480], pa.int64()),
            "height": pa.array([480, 640], pa.int64()),
            "quality": pa.array([0.7, 0.9]),
            "image_format": ["jpeg", "jpeg"],
        }
    )
    pq.write_table(table, tmp_path / "shard.parquet")
    with caplog.at_level(logging.WARNING, logger="jobs.sources"):
        items = list(iter_source(JobKind.CAPTION, str(tmp_path / "shard.parquet")))
    assert [(i.key, i.params) for i in items] == [("000000000", None), ("000000001", None)]
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}/shard.parquet: field(s) caption, height, image_format, quality, status, width are not "
        "read by caption jobs and were ignored"
    ]
    caplog.clear()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "a", "image": "a.jpg", "note": 1}\n{"id": "b", "image": "b.jpg", "url2": "x"}\n'
    )
    with caplog.at_level(logging.WARNING, logger="jobs.sources"):
        assert len(list(iter_source(JobKind.CAPTION, str(manifest)))) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{manifest}: field(s) note, url2 are not read by caption jobs and were ignored"
    ]
    caplog.clear()
    manifest.write_text('{"id": "a", "image": "a.jpg", "seed": 1}\n')
    with caplog.at_level(logging.WARNING, logger="jobs.sources"):
        list(iter_source(JobKind.CAPTION, str(manifest)))
    assert caplog.records == []


def test_numeric_parameters_written_as_text_still_validate(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt,steps,width,txt_cfg\ng1,a fox,50,512,4.5\ng2,a hen,,,\n")
    check = ItemChecker(JobKind.GENERATE, embedded_settings(tmp_path))
    items = [check(item) for item in iter_source(JobKind.GENERATE, str(manifest))]
    assert [i.params for i in items] == [{"steps": 50, "width": 512, "txt_cfg": 4.5}, None]
