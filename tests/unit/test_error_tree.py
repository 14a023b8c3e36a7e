"""One error tree: a storage error becomes this project's error once, by what was being read or written."""

from __future__ import annotations

from pathlib import Path

import pytest

import storage
from jobs import errors
from jobs.errors import from_storage
from jobs.lifecycle import JobKind
from jobs.sources import iter_source

URL = "s3://bucket/in/cat.jpg"
MISSING = storage.ObjectNotFound(f"cannot read {URL}: NoSuchKey", url=URL)
DENIED = storage.AccessDenied(f"cannot read {URL}: AccessDenied", url=URL)
DOWN = storage.StorageUnavailable(f"cannot read {URL}: 503 (after retries)", url=URL)
REFUSED = storage.StorageError(f"cannot read {URL}: InvalidRange", url=URL)


@pytest.mark.parametrize(
    ("exc", "role", "code", "message"),
    [
        (MISSING, "input", "input_missing", f"{URL} does not exist"),
        (MISSING, "source", "invalid_source", f"{URL} does not exist"),
        (MISSING, "output", "storage_error", str(MISSING)),
        (REFUSED, "input", "input_missing", f"{URL} cannot be read: {REFUSED}"),
        (REFUSED, "source", "invalid_source", f"{URL} cannot be read: {REFUSED}"),
        (REFUSED, "output", "storage_error", str(REFUSED)),
        *[(DENIED, role, "access_denied", str(DENIED)) for role in ("input", "source", "output")],
        *[(DOWN, role, "storage_unavailable", str(DOWN)) for role in ("input", "source", "output")],
    ],
)
def test_a_storage_error_maps_to_one_code_by_role(
    exc: storage.StorageError, role: errors.StorageRole, code: str, message: str
) -> None:
    mapped = from_storage(exc, role=role)
    assert isinstance(mapped, errors.OvisBatchError)
    assert (mapped.error_code, str(mapped)) == (code, message)
    assert mapped.transient is isinstance(exc, storage.StorageUnavailable)
    assert isinstance(mapped, errors.BadInput) is (
        role != "output" and code in ("input_missing", "invalid_source")
    )


def test_the_url_given_is_the_one_named() -> None:
    member = "s3://bucket/shard.tar#a.jpg@512+10"
    assert str(from_storage(MISSING, role="input", url=member)) == f"{member} does not exist"


def test_every_code_of_the_tree_is_distinct() -> None:
    classes = [errors.OvisBatchError]
    for cls in classes:
        classes.extend(cls.__subclasses__())
    codes = [cls.error_code for cls in classes]
    assert len(codes) == len(set(codes)), codes


def test_a_missing_manifest_is_an_invalid_source(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidSource, match="does not exist"):
        list(iter_source(JobKind.CAPTION, str(tmp_path / "missing.jsonl")))
