"""WebDataset shards the way img2dataset writes them: `00000.tar` of samples, `00000.parquet` beside it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.helpers import SAMPLE_PHOTOS, sample_photo


def jpeg_bytes(index: int, size: int = 48) -> bytes:
    """A small real photo as JPEG bytes."""
    buffer = io.BytesIO()
    sample_photo(SAMPLE_PHOTOS[index % len(SAMPLE_PHOTOS)], size).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def write_shard(folder: Path, shard: int, samples: int, *, failed: tuple[int, ...] = ()) -> list[str]:
    """Write shard number `shard` with `samples` rows; rows in `failed` are download failures (no member).

    Returns the keys of the samples that have an image, in shard order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    keys, rows = [], []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
        for index in range(samples):
            key = f"{shard:05d}{index:04d}"
            ok = index not in failed
            rows.append(
                {
                    "key": key,
                    "url": f"https://example.com/{key}.jpg",
                    "caption": f"alt text {key}",
                    "status": "success" if ok else "failed_to_download",
                }
            )
            if not ok:
                continue
            keys.append(key)
            for name, data in (
                (f"{key}.jpg", jpeg_bytes(index)),
                (f"{key}.txt", f"alt text {key}".encode()),
                (f"{key}.json", json.dumps({"key": key}).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    return keys
