"""S3 errors as the storage package raises them, and S3 secrets kept out of messages; no S3 server needed
(the S3 store against a real server: tests/integration/test_storage_s3.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage import AccessDenied, ObjectNotFound, S3Options, StorageError, StorageUnavailable, open_store
from storage.s3 import S3Store, wrap_error


def test_an_unreachable_endpoint_is_storage_unavailable_after_the_configured_attempts() -> None:
    # A port bound and never listened on: every connection to it is refused, and nobody else can take it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        options = S3Options(
            endpoint_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="not-in-messages",
            addressing_style="path",
            max_attempts=2,
            connect_timeout_s=0.5,
            read_timeout_s=0.5,
        )
        store = open_store("s3://bucket/prefix", options)
        assert isinstance(store, S3Store)
        attempts: list[str] = []

        def count(request: Any, **_: Any) -> None:
            attempts.append(request.url)

        store.client.meta.events.register("before-send.s3", count)
        try:
            with pytest.raises(StorageUnavailable) as info:
                store.read("a.png")
            # Given up after the configured attempts, not retried on and on.
            assert len(attempts) == 2, attempts
            assert info.value.error_code == "storage_unavailable"
            assert info.value.transient
            assert "s3://bucket/prefix/a.png" in str(info.value)
            assert "not-in-messages" not in str(info.value)
            with pytest.raises(StorageUnavailable):
                list(store.iter_keys())
        finally:
            store.client.meta.events.unregister("before-send.s3", count)


def test_secret_not_in_repr() -> None:
    options = S3Options(access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t-value", session_token="t0ken")

    assert "s3cr3t-value" not in repr(options)
    assert "t0ken" not in repr(options)
    assert "s3cr3t-value" not in repr(open_store("s3://bucket", options))


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("404", 404, ObjectNotFound),
        ("AccessDenied", 403, AccessDenied),
        ("InvalidAccessKeyId", 403, AccessDenied),
        ("SlowDown", 503, StorageUnavailable),
        ("InternalError", 500, StorageUnavailable),
        ("InvalidBucketName", 400, StorageError),
    ],
)
def test_provider_errors_map_to_storage_errors(code: str, status: int, expected: type[StorageError]) -> None:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = ClientError(response, "GetObject")

    wrapped = wrap_error(error, "read", "s3://b/k")

    assert type(wrapped) is expected
    assert "s3://b/k" in str(wrapped)
