"""Every source kind read locally: folders, prompt files, JSONL / CSV / Parquet manifests, tar shards."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.errors import InputNotAllowed, InvalidSource
from jobs.inputs import InputRoots, input_allowed, read_allowed_input, read_input
from jobs.lifecycle import JobKind
from jobs.sources import Columns, iter_source
from jobs.webdataset import expand_braces, parse_member_url
from storage import ObjectNotFound, is_within
from tests.helpers import write_photos
from tests.webdataset_helpers import write_shard


def _items(
    kind: JobKind, url: Path | str, columns: Columns | None = None
) -> list[tuple[str, str, str, object]]:
    return [(i.key, i.source, i.text, i.params) for i in iter_source(kind, str(url), None, columns)]


def test_folder_is_read_recursively_by_extension_with_relative_ids(tmp_path: Path) -> None:
    write_photos(tmp_path / "in" / "a", count=2)
    write_photos(tmp_path / "in" / "b" / "c", count=1)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "b" / "UPPER.PNG").write_bytes(b"")
    items = _items(JobKind.CAPTION, tmp_path / "in")
    assert [key for key, *_ in items] == [
        "a/photo000.jpg",
        "a/photo001.jpg",
        "b/UPPER.PNG",
        "b/c/photo000.jpg",
    ]
    assert all(source == str(tmp_path / "in" / key) for key, source, *_ in items)


def test_jsonl_manifest_keeps_ids_resolves_images_and_reads_per_item_fields(tmp_path: Path) -> None:
    lines = [
        {"id": "cat-1", "image": "imgs/a.jpg", "prompt": "What breed?", "seed": 7},
        {"id": 42, "image": str(tmp_path / "abs.jpg")},
        {"image": "imgs/../imgs/b.jpg"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    assert _items(JobKind.CAPTION, manifest) == [
        ("cat-1", str(tmp_path / "imgs" / "a.jpg"), "What breed?", {"seed": 7}),
        ("42", str(tmp_path / "abs.jpg"), "", None),
        ("imgs/../imgs/b.jpg", str(tmp_path / "imgs" / "b.jpg"), "", None),
    ]


def test_bad_manifest_lines_are_reported_with_their_number(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.jpg"}\n\n{"image": "b.jpg"\n')
    with pytest.raises(InvalidSource, match=r"line 3: not valid JSON"):
        list(iter_source(JobKind.CAPTION, str(manifest)))
    manifest.write_text('{"image": "a.jpg"}\n[1, 2]\n')
    with pytest.raises(InvalidSource, match=r"line 2: expected a JSON object"):
        list(iter_source(JobKind.CAPTION, str(manifest)))
    manifest.write_text('{"image": "a.jpg"}\n{"id": "x"}\n')
    with pytest.raises(InvalidSource, match=r"line 2: no image field"):
        list(iter_source(JobKind.CAPTION, str(manifest)))


def test_gzipped_jsonl_and_csv(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as out:
        out.write(json.dumps({"id": "g", "image": "g.jpg"}) + "\n")
    assert [i.key for i in iter_source(JobKind.CAPTION, str(tmp_path / "m.jsonl.gz"))] == ["g"]
    csv_path = tmp_path / "edits.csv"
    csv_path.write_text(
        'id,image,instruction,seed\ne1,a.jpg,"make it red, please",3\ne2,b.jpg,"two\nlines",\n'
    )
    assert _items(JobKind.EDIT, csv_path) == [
        ("e1", str(tmp_path / "a.jpg"), "make it red, please", {"seed": "3"}),
        ("e2", str(tmp_path / "b.jpg"), "two\nlines", None),
    ]
    csv_path.write_text("id,image\ne1,\n")
    with pytest.raises(InvalidSource, match="line 2: no image field"):
        list(iter_source(JobKind.EDIT, str(csv_path)))


def test_parquet_manifest_reads_only_the_columns_it_needs(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(
        [
            {"key": f"k{i}", "path": f"p/{i}.png", "exif": "x" * 100, "text": f"prompt {i}"}
            for i in range(25_000)
        ]
    )
    pq.write_table(table, tmp_path / "m.parquet", row_group_size=4000)
    items = list(iter_source(JobKind.GENERATE, str(tmp_path / "m.parquet")))
    assert len(items) == 25_000
    assert (items[-1].key, items[-1].source, items[-1].text) == ("k24999", "", "prompt 24999")
    captions = list(iter_source(JobKind.CAPTION, str(tmp_path / "m.parquet")))
    assert captions[3].source == str(tmp_path / "p" / "3.png")


def test_explicit_columns_and_image_root(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"sku": "A-1", "picture": "a.jpg", "id": "ignored"}) + "\n")
    columns = Columns(id="sku", image="picture", image_root=str(tmp_path / "elsewhere"))
    assert _items(JobKind.CAPTION, manifest, columns) == [
        ("A-1", str(tmp_path / "elsewhere" / "a.jpg"), "", None)
    ]


def test_prompt_file(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n\n  a lighthouse  \n")
    assert _items(JobKind.GENERATE, prompts) == [
        ("000001", "", "a fox", None),
        ("000003", "", "a lighthouse", None),
    ]


def test_webdataset_shards_become_items_addressed_by_shard_and_member(tmp_path: Path) -> None:
    keys0 = write_shard(tmp_path / "shards", 0, 5, failed=(2,))
    keys1 = write_shard(tmp_path / "shards", 1, 3)
    for source in (tmp_path / "shards" / "{00000..00001}.tar", tmp_path / "shards"):
        items = list(iter_source(JobKind.CAPTION, str(source)))
        assert [i.key for i in items] == keys0 + keys1
    member = parse_member_url(items[0].source)
    assert member is not None and member.shard == str(tmp_path / "shards" / "00000.tar")
    assert member.member == f"{keys0[0]}.jpg"
    image = Image.open(__import__("io").BytesIO(read_input(items[4].source, None)))
    assert image.size[0] > 0
    assert _items(JobKind.CAPTION, tmp_path / "shards" / "00001.tar")[0][0] == keys1[0]
    with pytest.raises(InvalidSource, match="need a manifest"):
        list(iter_source(JobKind.EDIT, str(tmp_path / "shards" / "00001.tar")))


def test_brace_ranges_expand_with_their_padding() -> None:
    assert expand_braces("s3://b/{008..011}.tar") == [f"s3://b/{n:03d}.tar" for n in range(8, 12)]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_a_worker_reads_inputs_by_their_real_paths(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.jpg").write_bytes(b"inside")
    (outside / "secret.jpg").write_bytes(b"secret")
    os.symlink(root / "sub" / "a.jpg", root / "inner-link.jpg")
    os.symlink(outside / "secret.jpg", root / "outer-link.jpg")
    os.symlink(outside, root / "linked-folder")
    roots = [str(root)]
    assert read_allowed_input(str(root / "sub" / "a.jpg"), roots, None) == b"inside"
    assert read_allowed_input(str(root / "inner-link.jpg"), roots, None) == b"inside"  # followed: inside
    for url in (root / "outer-link.jpg", root / "linked-folder" / "secret.jpg", outside / "secret.jpg"):
        with pytest.raises(InputNotAllowed):
            read_allowed_input(str(url), roots, None)
    with pytest.raises(InputNotAllowed):  # not normal: the full check sees where it leads
        read_allowed_input(f"{root}/sub/../../outside/secret.jpg", roots, None)
    with pytest.raises(ObjectNotFound):
        read_allowed_input(str(root / "sub" / "missing.jpg"), roots, None)


def test_input_roots_memo_agrees_with_is_within(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    roots = InputRoots([str(root), "s3://bucket/data"])
    candidates = [
        str(root / "sub" / "a.jpg"),
        str(root / "sub" / ".." / ".." / "x.jpg"),
        str(root / "link" / "a.jpg"),
        str(tmp_path / "rootless.jpg"),
        "s3://bucket/data/a/b.jpg",
        "s3://bucket/database/b.jpg",
        "s3://bucket/data/../secret.jpg",
        "http://example.com/a.jpg",
        f"{root}/sub/shard.tar#a.jpg@512+10",
    ]
    for url in candidates:
        assert roots.allows(url) == input_allowed(url, roots.roots), url
    assert roots.allows(str(root / "sub" / "a.jpg")) and not roots.allows(str(root / "link" / "a.jpg"))
    assert is_within(str(root / "sub"), roots.roots)
