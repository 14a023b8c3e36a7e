"""Storage URLs: open_store parsing and is_within confinement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import LocalStore, S3Options, S3Store, is_within, open_store, parse_url, read_url


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "store_url"),
    [
        ("s3://bucket", "bucket", "", "s3://bucket"),
        ("s3://bucket/", "bucket", "", "s3://bucket"),
        ("s3://bucket/data/in", "bucket", "data/in", "s3://bucket/data/in"),
        ("S3://bucket/data/", "bucket", "data", "s3://bucket/data"),
    ],
)
def test_open_store_s3(url: str, bucket: str, prefix: str, store_url: str) -> None:
    store = open_store(url, S3Options(region="us-east-1"))

    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == (bucket, prefix, store_url)
    assert store.url_for("x/1.png") == f"{store_url}/x/1.png"


def test_open_store_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spaced = tmp_path / "with space"

    for url in [str(tmp_path / "out"), f"file://{tmp_path}/out", "out", "./sub/../out"]:
        store = open_store(url)
        assert isinstance(store, LocalStore)
        assert store.url == str(tmp_path / "out")
    assert open_store(spaced.as_uri()).url == str(spaced)
    assert open_store(f"file://localhost{tmp_path}").url == str(tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "http://example.com/a",
        "https://h/x",
        "ftp://h/x",
        "gs://b/k",
        "s3://",
        "s3:///key",
        "file://host/x",
    ],
)
def test_open_store_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="expected s3://bucket"):
        open_store(url)


def test_read_url_needs_an_object(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"hello")

    assert read_url(str(tmp_path / "a.txt")) == b"hello"
    assert read_url((tmp_path / "a.txt").as_uri()) == b"hello"
    with pytest.raises(ValueError):
        read_url("s3://bucket")
    with pytest.raises(ValueError):
        read_url("http://example.com/a.png")


def test_parse_url_keeps_query_like_characters_in_s3_keys() -> None:
    location = parse_url("s3://b/odd?name#1.png")

    assert (location.scheme, location.bucket, location.path) == ("s3", "b", "odd?name#1.png")


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("s3://b/data/x.png", True),
        ("s3://b/data", True),
        ("s3://b/data/sub/deep/y.png", True),
        ("s3://b/database/x.png", False),
        ("s3://b/dat", False),
        ("s3://other/data/x.png", False),
        ("s3://b/data/../secret/x.png", False),
        ("s3://b/data/./x.png", False),
        ("s3://everything/any/key", True),
        ("/data/x.png", False),
        ("http://b/data/x.png", False),
        ("", False),
    ],
)
def test_is_within_s3(url: str, inside: bool) -> None:
    assert is_within(url, ["s3://b/data/", "s3://everything"]) is inside


def test_is_within_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "inputs"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "inputs-other").mkdir()
    (tmp_path / "secret.txt").write_text("x")
    roots = [str(root)]

    assert is_within(str(root / "sub" / "a.png"), roots)
    assert is_within(str(root), roots)
    assert is_within((root / "a.png").as_uri(), roots)
    assert is_within(str(root / "not-yet-there.png"), roots)
    assert not is_within(str(root / ".." / "secret.txt"), roots)
    assert not is_within(str(root / "sub" / ".." / ".." / "secret.txt"), roots)
    assert not is_within(str(tmp_path / "inputs-other" / "a.png"), roots)
    assert not is_within(str(tmp_path / "secret.txt"), roots)
    assert not is_within("s3://inputs/a.png", roots)
    assert not is_within(str(root / "a.png"), [])
    monkeypatch.chdir(root)
    assert is_within("sub/a.png", roots)
    assert is_within("a.png", ["."])
    assert not is_within("../secret.txt", ["."])


def test_is_within_refuses_symlink_escapes(tmp_path: Path) -> None:
    root = tmp_path / "inputs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("x")
    os.symlink(outside / "secret.txt", root / "link.txt")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "real.txt", root / "inner-link.txt")
    roots = [str(root)]

    assert not is_within(str(root / "link.txt"), roots)
    assert not is_within(str(root / "linkdir" / "secret.txt"), roots)
    assert is_within(str(root / "inner-link.txt"), roots)


def test_is_within_follows_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")

    assert is_within(str(real / "a.png"), [str(tmp_path / "alias")])
    assert is_within(str(tmp_path / "alias" / "a.png"), [str(real)])


def test_is_within_mixes_schemes_without_matching_across(tmp_path: Path) -> None:
    roots = [str(tmp_path), "s3://b/in"]

    assert is_within(str(tmp_path / "x"), roots)
    assert is_within("s3://b/in/x", roots)
    assert not is_within("s3://b/out/x", roots)


def test_is_within_refuses_an_unsupported_root() -> None:
    with pytest.raises(ValueError):
        is_within("s3://b/k", ["http://example.com/"])
