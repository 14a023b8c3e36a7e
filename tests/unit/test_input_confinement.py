"""A worker's read of an input: confined to the roots on every read, and tar member ranges checked before
anything is allocated (jobs/inputs.py, jobs/webdataset.py, storage/local.py)."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.errors import BadInput, ImageTooLarge, InputMissing, InputNotAllowed
from jobs.inputs import read_allowed_input
from storage import ObjectNotFound


def test_a_folder_swapped_for_a_link_outside_is_refused_at_the_next_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "photos").mkdir(parents=True)
    (outside / "photos").mkdir(parents=True)
    (root / "photos" / "a.jpg").write_bytes(b"inside")
    (outside / "photos" / "a.jpg").write_bytes(b"secret")
    url, roots = str(root / "photos" / "a.jpg"), [str(root)]
    assert read_allowed_input(url, roots, None) == b"inside"

    (root / "photos").rename(root / "photos-before")
    (root / "photos").symlink_to(outside / "photos")

    with pytest.raises(InputNotAllowed, match="outside the allowed input roots"):
        read_allowed_input(url, roots, None)  # at once: nothing checked before is trusted
    (root / "photos").unlink()
    (root / "photos").symlink_to(root / "photos-before")  # a link that stays inside keeps working
    assert read_allowed_input(url, roots, None) == b"inside"


# What an entry of the tree under the root is: a file, a folder holding one, or a link to somewhere.
_ENTRY_KINDS = ["file", "folder", "fifo", "link-to-file", "link-to-folder", "link-out", "link-out-folder",
                "link-dangling", "link-up", "link-to-root"]  # fmt: skip


def _make(root: Path, outside: Path, name: str, kind: str) -> None:
    entry = root / name
    if kind == "file":
        entry.write_bytes(name.encode())
    elif kind == "folder":
        entry.mkdir()
        (entry / "f.jpg").write_bytes(name.encode())
    elif kind == "fifo":
        os.mkfifo(entry)
    elif kind == "link-to-file":
        (root / f"{name}-target").write_bytes(b"target")
        entry.symlink_to(f"{name}-target")  # relative, inside
    elif kind == "link-to-folder":
        (root / f"{name}-dir").mkdir()
        (root / f"{name}-dir" / "f.jpg").write_bytes(b"in folder")
        entry.symlink_to(root / f"{name}-dir")
    elif kind == "link-out":
        entry.symlink_to(outside / "secret.jpg")
    elif kind == "link-out-folder":
        entry.symlink_to(outside)
    elif kind == "link-dangling":
        entry.symlink_to(root / "nowhere")
    elif kind == "link-up":
        entry.symlink_to("..")  # the root's parent: outside
    else:
        entry.symlink_to(".")  # the root itself


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(_ENTRY_KINDS), min_size=1),
    tails=st.lists(st.sampled_from(["", "/f.jpg", "/secret.jpg", "/a", "/../a", "/./f.jpg"]), min_size=1),
)
def test_a_read_is_allowed_exactly_when_the_real_path_is_inside(
    entries: dict[str, str], tails: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as home:
        root, outside = Path(home, "root"), Path(home, "outside")
        root.mkdir()
        outside.mkdir()
        (outside / "secret.jpg").write_bytes(b"secret")
        (outside / "f.jpg").write_bytes(b"secret")
        for name, kind in entries.items():
            _make(root, outside, name, kind)
        for name in entries:
            for tail in tails:
                url = f"{root}/{name}{tail}"
                real = os.path.realpath(os.path.normpath(url))  # ".." is taken lexically first, as at submit
                inside = real == str(root) or real.startswith(f"{root}/")
                try:
                    data: bytes | Exception = read_allowed_input(url, [str(root)], None)
                except (BadInput, ObjectNotFound) as exc:
                    data = exc
                if not inside:
                    assert isinstance(data, InputNotAllowed), (url, data)
                elif os.path.isfile(real):
                    assert data == Path(real).read_bytes(), (url, data)
                elif os.path.lexists(real):
                    assert isinstance(data, InputMissing) and "not a file" in str(data), (url, data)
                else:
                    assert isinstance(data, ObjectNotFound), (url, data)


MAX_BYTES = 100_000


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, bytes]]]:
    """A tar shard of a few members (one with a name too long for a plain header): name -> (offset, data)."""
    folder = tmp_path_factory.mktemp("shard")
    members = {
        "000.jpg": os.urandom(700),
        "001.png": os.urandom(1500),
        f"{'d' * 120}/002.jpg": os.urandom(3),
        "003.jpg": os.urandom(700),  # the size of another member
    }
    path = folder / "00000.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return path, {info.name: (info.offset_data, members[info.name]) for info in tar.getmembers()}


_HUGE = st.integers(min_value=0, max_value=10**16)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_a_member_reads_its_bytes_or_fails_as_bad_input_whatever_its_range(
    shard: tuple[Path, dict[str, tuple[int, bytes]]], data: st.DataObject
) -> None:
    path, members = shard
    name = data.draw(st.sampled_from(sorted(members)))
    real_offset = members[name][0]
    near = st.sampled_from([real_offset + delta for delta in (-512, -1, 0, 1, 512)])
    offset = data.draw(st.one_of(near, st.sampled_from([off for off, _ in members.values()]), _HUGE))
    size = data.draw(
        st.one_of(st.sampled_from([len(c) for _, c in members.values()]), st.integers(0, 3000), _HUGE)
    )
    url = f"{path}#{name}@{offset}+{size}"
    try:
        read: bytes | BadInput = read_allowed_input(url, [str(path.parent)], None, MAX_BYTES)
    except BadInput as exc:
        read = exc
    # The member whose data the range covers exactly, if any. A header holds a name of up to 100 ASCII
    # characters whole; a longer one only as a cut copy, so for such a name the size and type are compared.
    owner = {(off, len(c)): n for n, (off, c) in members.items()}.get((offset, size))
    if owner == name or (owner is not None and not (name.isascii() and len(name) <= 100)):
        assert read == members[owner][1]
    elif size > MAX_BYTES:
        assert isinstance(read, ImageTooLarge) and "OVIS_BATCH_MAX_IMAGE_BYTES" in str(read)
    else:
        assert isinstance(read, InputMissing) and str(read).startswith(f"{url}: "), read
