"""WebDataset tar shards, the layout img2dataset writes: one item per sample that holds an image.

A shard `00000.tar` holds samples as consecutive members sharing a key (`000000123.jpg`, `000000123.txt`,
`000000123.json`); img2dataset writes `00000.parquet` (one row per sample: key, url, caption, ...) beside it.
An item keeps the sample key as its id and is addressed by its shard and the byte range of its image member,
`{shard}#{member}@{offset}+{size}`: a worker reads it with one ranged GET (or a seek), never the whole shard.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from jobs.errors import ImageTooLarge, InputMissing, InvalidSource
from jobs.objects import open_stream
from storage import LocalFile, S3Options, S3Store, open_store, parse_url

_MEMBER_URL = re.compile(r"^(?P<shard>.+?\.tar)#(?P<member>[^#]+)@(?P<offset>\d+)\+(?P<size>\d+)$")
# WebDataset's rule: a sample key is the member path up to the first dot of its file name.
_SAMPLE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
#: Extensions of image members (the rest of a sample, .txt and .json, is not needed to caption it).
IMAGE_MEMBER_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
#: The name field of a tar header.
_HEADER_NAME_BYTES = 100


@dataclass(frozen=True)
class TarMember:
    """One member of a tar shard, by shard URL and the byte range of its data."""

    shard: str
    member: str
    offset: int
    size: int

    @property
    def url(self) -> str:
        """The item source that addresses this member."""
        return f"{self.shard}#{self.member}@{self.offset}+{self.size}"


def parse_member_url(url: str) -> TarMember | None:
    """The member a source URL addresses, or None for a plain object."""
    if ".tar#" not in url:
        return None
    match = _MEMBER_URL.match(url)
    if match is None:
        return None
    return TarMember(match["shard"], match["member"], int(match["offset"]), int(match["size"]))


def check_member_range(member: TarMember, max_bytes: int | None) -> None:
    """Refuse, before any read, a member larger than `max_bytes` or whose data cannot start where it says
    (tar data starts after a 512-byte header, on a 512-byte boundary)."""
    if max_bytes is not None and member.size > max_bytes:
        raise ImageTooLarge(
            f"{member.url}: the member has {member.size} bytes; the limit is {max_bytes} "
            "(OVIS_BATCH_MAX_IMAGE_BYTES)"
        )
    if member.offset < tarfile.BLOCKSIZE or member.offset % tarfile.BLOCKSIZE:
        raise InputMissing(
            f"{member.url}: no tar member's data starts at byte {member.offset} (data starts after a "
            f"{tarfile.BLOCKSIZE}-byte header, on a {tarfile.BLOCKSIZE}-byte boundary); submit the shard "
            "again to address its members"
        )


def read_local_member(shard: LocalFile, member: TarMember) -> bytes:
    """The bytes of a member of a local shard already opened (and confined) by the caller: the range is
    checked against the shard's size and the member's header before the data is read."""
    end = member.offset + member.size
    if end > shard.size:
        raise InputMissing(
            f"{member.url}: the shard has {shard.size} bytes and the member would end at byte {end}; "
            "was the shard rewritten after submission?"
        )
    check_member_header(shard.read(member.offset - tarfile.BLOCKSIZE, tarfile.BLOCKSIZE), member)
    return shard.read(member.offset, member.size)


def read_s3_member(member: TarMember, s3: S3Options | None) -> bytes:
    """The bytes of a member of a shard in S3: one ranged GET of its header and data, whose answer is
    checked against the range and the header before the data is read."""
    location = parse_url(member.shard)
    start, end = member.offset - tarfile.BLOCKSIZE, member.offset + member.size
    with S3Store(location.bucket, "", s3).get(location.path, start=start, stop=end) as answer:
        if answer.size != end - start:
            raise InputMissing(
                f"{member.url}: the shard has {answer.total} bytes and the member would end at byte {end}; "
                "was the shard rewritten after submission?"
            )
        check_member_header(answer.read(tarfile.BLOCKSIZE), member)
        return answer.read()


def check_member_header(block: bytes, member: TarMember) -> None:
    """Refuse a member whose range does not follow the header of a regular file of that size and name."""
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        problem = f"no tar header precedes byte {member.offset} ({exc})"
    else:
        if not info.isreg():
            problem = f"the header before byte {member.offset} is not a file's"
        elif info.size != member.size:
            problem = f"the header before byte {member.offset} gives {info.size} bytes, not {member.size}"
        elif info.name != member.member and _whole_name_in_header(member.member):
            problem = f"the header before byte {member.offset} names {info.name!r}, not {member.member!r}"
        else:
            return
    raise InputMissing(f"{member.url}: {problem}; was the shard rewritten after submission?")


def _whole_name_in_header(name: str) -> bool:
    # Longer or non-ASCII names live in a GNU long-name or pax record before the header, which holds a cut or
    # re-encoded copy: only the size and the type can be compared then.
    return name.isascii() and len(name) <= _HEADER_NAME_BYTES


def is_shard_source(url: str) -> bool:
    """True when `url` names tar shards: one `.tar`, or a brace range like `{00000..00099}.tar`."""
    return url.endswith(".tar") or bool(_BRACES.search(url) and ".tar" in url)


def expand_braces(url: str) -> list[str]:
    """Expand WebDataset's numeric brace ranges: `shards/{000..002}.tar` -> three shard URLs."""
    match = _BRACES.search(url)
    if match is None:
        return [url]
    first, last = match.group(1), match.group(2)
    width = len(first)
    head, tail = url[: match.start()], url[match.end() :]
    if int(last) < int(first):
        raise InvalidSource(f"{url}: the range {{{first}..{last}}} is empty")
    return [
        expanded
        for number in range(int(first), int(last) + 1)
        for expanded in expand_braces(f"{head}{number:0{width}d}{tail}")
    ]


def iter_shard_urls(url: str, s3: S3Options | None) -> Iterator[str]:
    """The shards of a source: a brace range, one `.tar`, or every `.tar` under a folder or prefix."""
    if is_shard_source(url):
        yield from expand_braces(url)
        return
    store = open_store(url, s3)
    for key in store.iter_keys():
        if key.endswith(".tar"):
            yield store.url_for(key)


@contextmanager
def _open_shard(shard: str, s3: S3Options | None) -> Iterator[tarfile.TarFile]:
    location = parse_url(shard)
    if location.scheme == "local" and not os.path.isfile(location.path):
        raise InvalidSource(f"{shard} does not exist")
    with open_stream(shard, s3) as stream:
        try:
            # A local file seeks over member data ("r:"); an S3 body can only be read through ("r|").
            if location.scheme == "local":
                with tarfile.open(fileobj=stream, mode="r:") as archive:
                    yield archive
            else:
                with tarfile.open(fileobj=stream, mode="r|") as archive:
                    yield archive
        except tarfile.TarError as exc:
            raise InvalidSource(f"{shard} is not a readable tar shard: {exc}") from None


def iter_shard(shard: str, s3: S3Options | None) -> Iterator[tuple[str, TarMember]]:
    """(sample key, image member) for each sample of a shard that holds an image, in shard order.

    A local shard is read by headers only (tarfile seeks over member data); an S3 shard is streamed once,
    sequentially, since hopping from header to header would cost one request per member.
    """
    last_key = None
    with _open_shard(shard, s3) as archive:
        while True:
            try:
                info = archive.next()
            except tarfile.TarError as exc:
                raise InvalidSource(f"{shard} is damaged: {exc}") from None
            if info is None:
                return
            # tarfile remembers every member it read; forget them so a large shard costs no memory.
            cast(Any, archive).members.clear()
            if not info.isfile():
                continue
            match = _SAMPLE.match(info.name)
            if match is None or match.group(2).lower() not in IMAGE_MEMBER_EXTENSIONS:
                continue
            key = match.group(1).removeprefix("./")
            if key == last_key:
                continue  # a second image of the same sample: the first one is the sample's image
            last_key = key
            yield key, TarMember(shard, info.name, info.offset_data, info.size)
