"""Caption files: one per exported item, never an input, never outside the destination folder."""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jobs.errors import InvalidExport
from jobs.export import ExportOptions, write_export
from jobs.export_captions import relative_key
from jobs.settings import Settings
from storage.base import check_key
from tests.export_helpers import captioned_job
from tests.helpers import embedded_settings

TXT = ExportOptions("txt")
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("captions")


@pytest.fixture(scope="module")
def config(home: Path) -> Settings:
    return embedded_settings(home)


def _files(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, and every folder as the path with a trailing "/"."""
    found: dict[str, bytes] = {}
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        for name in dirs:
            found[os.path.normpath(os.path.join(rel, name)) + "/"] = b""
        for name in names:
            found[os.path.normpath(os.path.join(rel, name))] = Path(folder, name).read_bytes()
    return found


def _sandbox(home: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=home))


# Ids built from the characters that break paths: separators, dots, percent signs.
_SPECIAL_IDS = [
    "../../esc",
    "esc",
    "/abs/x",
    "abs/x",
    "./x",
    "x",
    "a//b",
    "a/b",
    ".",
    "..",
    "",
    "%2E%2E",
    "%",
]
_ID_TEXT = st.text(alphabet=st.sampled_from(["a", "é", ".", "/", "%", " "]), max_size=10)


@EXAMPLES
@given(ids=st.lists(st.one_of(st.sampled_from(_SPECIAL_IDS), _ID_TEXT), min_size=1, max_size=8, unique=True))
def test_under_a_folder_each_id_gets_its_own_file_inside_it(
    home: Path, config: Settings, ids: list[str]
) -> None:
    # Every id ends in "_.jpg", so no two share a stem: the export must write one file per item.
    ids = [f"{item_id}_.jpg" for item_id in ids]
    root = _sandbox(home)
    out = root / "deep" / "out"
    job_id = captioned_job(
        config, [(item_id, str(root / "in" / f"{n}.jpg"), True) for n, item_id in enumerate(ids)]
    )

    report = write_export(config, job_id, f"{out}/", TXT)

    written = _files(root)
    files = {path: data for path, data in written.items() if not path.endswith("/")}
    assert report.count == report.files == len(files) == len(ids)
    assert all(os.path.realpath(root / path).startswith(f"{out}/") for path in files)
    assert sorted(files.values()) == sorted(f"caption of {item_id}".encode() for item_id in ids)


_FOLDERS = ["", "s/", "d.txt/"]
_STEMS = ["a", "b", "notes", ".a", "d"]
_EXTS = [".jpg", ".png", ".txt", "", ".jpg.txt"]


@EXAMPLES
@given(
    inputs=st.lists(
        st.tuples(st.sampled_from(_FOLDERS), st.sampled_from(_STEMS), st.sampled_from(_EXTS), st.booleans()),
        min_size=1,
        max_size=6,
        unique_by=lambda entry: entry[:3],
    )
)
def test_beside_the_inputs_no_input_is_written_and_no_file_shared(
    home: Path, config: Settings, inputs: list[tuple[str, str, str, bool]]
) -> None:
    names = {folder + stem + ext: succeeded for folder, stem, ext, succeeded in inputs}
    folders = {name.split("/")[0] for name in names if "/" in name}
    assume(not folders & names.keys())  # a path is a file or a folder, not both
    root = _sandbox(home)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"input {name}".encode())
    before = _files(root)
    job_id = captioned_job(config, [(name, str(root / name), succeeded) for name, succeeded in names.items()])

    # What the rule says: a caption file is the image's name with its last extension replaced by .txt.
    targets = {name: posixpath.splitext(name)[0] + ".txt" for name, succeeded in names.items() if succeeded}
    shared = len(set(targets.values())) < len(targets)
    occupied = any(target in names or target in folders for target in targets.values())

    if shared or occupied:
        with pytest.raises(InvalidExport, match="no caption file was written"):
            write_export(config, job_id, None, TXT)
        assert _files(root) == before
        return
    for _ in range(2):  # a second export replaces the caption files of the first
        report = write_export(config, job_id, None, TXT)
        after = _files(root)
        assert report.count == len(targets) and report.destination is None
        assert {path: after[path] for path in before} == before
        assert after.keys() - before.keys() == set(targets.values())
        assert all(after[target] == f"caption of {name}".encode() for name, target in targets.items())


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.text(alphabet=st.sampled_from(["a", ".", "/", "%", "2", "E"]), max_size=12), unique=True)
)
def test_relative_keys_are_distinct_valid_keys_that_stay_inside(ids: list[str]) -> None:
    keys = [relative_key(item_id) for item_id in ids]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert check_key(key) == key
        assert posixpath.normpath(posixpath.join("/out", key)).startswith("/out/")


def test_the_cases_of_the_issue(home: Path, config: Settings) -> None:
    root = _sandbox(home)
    for name in ("notes.txt", "a.jpg", "a.png", "b.jpg"):
        (root / name).write_bytes(b"image bytes")
    job_id = captioned_job(
        config, [(name, str(root / name), True) for name in ("notes.txt", "a.jpg", "a.png", "b.jpg")]
    )
    with pytest.raises(InvalidExport) as refused:
        write_export(config, job_id, None, TXT)
    message = str(refused.value)
    assert f"items 'a.jpg', 'a.png' would share {root / 'a.txt'}" in message
    assert f"{root / 'notes.txt'}, the caption file of item 'notes.txt', is an input of the job" in message
    assert sorted(path.name for path in root.iterdir()) == ["a.jpg", "a.png", "b.jpg", "notes.txt"]
    assert (root / "notes.txt").read_bytes() == b"image bytes"

    # Ids that climb out of the folder, and the plain id they would have met: two files, both inside.
    job_id = captioned_job(
        config, [("../../esc.png", str(root / "a.jpg"), True), ("esc.png", str(root / "b.jpg"), True)]
    )
    report = write_export(config, job_id, str(root / "out") + "/", TXT)
    assert report.describe() == f"wrote 2 caption files under {root / 'out'}"
    assert (root / "out" / "%2E%2E" / "%2E%2E" / "esc.txt").read_text() == "caption of ../../esc.png"
    assert (root / "out" / "esc.txt").read_text() == "caption of esc.png"


def test_caption_files_replace_links_and_report_folders_in_the_way(home: Path, config: Settings) -> None:
    root = _sandbox(home)
    outside = root / "outside.txt"
    outside.write_text("not a caption")
    out = root / "out"
    out.mkdir()
    (out / "a.txt").symlink_to(outside)
    job_id = captioned_job(config, [("a.jpg", str(root / "a.jpg"), True)])
    assert write_export(config, job_id, str(out), TXT).count == 1
    assert not (out / "a.txt").is_symlink() and (out / "a.txt").read_text() == "caption of a.jpg"
    assert outside.read_text() == "not a caption"

    (out / "a.txt").unlink()
    (out / "a.txt").mkdir()
    with pytest.raises(InvalidExport, match=r"cannot write the caption file .*/out/a\.txt"):
        write_export(config, job_id, str(out), TXT)
    assert [path.name for path in out.iterdir()] == ["a.txt"]
