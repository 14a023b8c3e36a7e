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

from botocore.exceptions import BotoCoreError, ClientError

from jobs.errors import InvalidSource
from jobs.objects import open_stream
from storage import ObjectNotFound, S3Options, StorageError, open_store, parse_url, s3_client
from storage.s3 import wrap_error

_MEMBER_URL = re.compile(r"^(?P<shard>.+?\.tar)#(?P<member>[^#]+)@(?P<offset>\d+)\+(?P<size>\d+)$")
# WebDataset's rule: a sample key is the member path up to the first dot of its file name.
_SAMPLE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")
#: Extensions of image members (the rest of a sample, .txt and .json, is not needed to caption it).
IMAGE_MEMBER_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})


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


def read_member(member: TarMember, s3: S3Options | None) -> bytes:
    """The bytes of one member: a seek in a local shard, one ranged GET in S3; storage errors as elsewhere."""
    location = parse_url(member.shard)
    if location.scheme == "local":
        try:
            with open(location.path, "rb") as shard:
                shard.seek(member.offset)
                data = shard.read(member.size)
        except FileNotFoundError:
            raise ObjectNotFound(f"no such shard: {member.shard}", url=member.shard) from None
        except OSError as exc:
            raise StorageError(f"{member.shard}: {exc.strerror or exc}", url=member.shard) from None
    else:
        stop = member.offset + member.size - 1
        try:
            response = s3_client(s3 or S3Options()).get_object(
                Bucket=location.bucket, Key=location.path, Range=f"bytes={member.offset}-{stop}"
            )
            data = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "read", member.url) from exc
    if len(data) != member.size:
        raise StorageError(
            f"{member.url}: the shard ends before the member ({len(data)} of {member.size} bytes); "
            "was the shard rewritten after submission?",
            url=member.url,
        )
    return data


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
