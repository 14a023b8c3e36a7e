"""A store in an S3 bucket: AWS or any S3-compatible endpoint (MinIO, Ceph, R2, moto)."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable

from storage.base import DEFAULT_CONTENT_TYPE, Store, check_key, check_prefix, check_presign_seconds
from storage.errors import AccessDenied, ObjectNotFound, StorageError, StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import GetObjectOutputTypeDef

_MB = 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes \d+-\d+/(?P<total>\d+)$")
_AddressingStyle = Literal["auto", "path", "virtual"]
_ADDRESSING_STYLES = ("auto", "path", "virtual")

# S3 error codes by what they mean to a caller; the HTTP status decides when the code is unknown.
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}
)
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3-compatible endpoint.

    Credentials left as None come from boto3's standard chain (environment, config files, instance roles).
    Equal options share one client per process (see ``s3_client``).
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    #: "path" for MinIO and moto, "virtual" for bucket.host style, "auto" lets botocore choose.
    addressing_style: str = "auto"
    #: Sized for the loader and writer threads of one worker, which all share one client.
    max_pool_connections: int = 32
    #: Attempts per request, the first one included; botocore's "standard" mode backs off between them
    #: (throttling included). Its "adaptive" mode adds a client-side rate limiter to every request, which
    #: costs client CPU on every GET and lowers the GET rate (bench/pipeline_overhead.py --storage s3).
    max_attempts: int = 5
    #: Files above this size go up in parts, several at a time.
    multipart_threshold_mb: int = 64
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.addressing_style not in _ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style must be one of {_ADDRESSING_STYLES}, not {self.addressing_style!r}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither (boto3's chain)")
        for name in ("max_pool_connections", "max_attempts", "multipart_threshold_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("connect_timeout_s and read_timeout_s must be positive")


_clients: dict[S3Options, S3Client] = {}
_clients_lock = threading.Lock()


def s3_client(options: S3Options) -> S3Client:
    """Return this process's client for ``options``, building it on first use.

    Clients are thread-safe and hold the connection pool, so one is shared by every thread; boto3 sessions
    are not thread-safe, so each client is built from its own session under a lock.
    """
    client = _clients.get(options)
    if client is None:
        with _clients_lock:
            client = _clients.get(options)
            if client is None:
                client = _build_client(options)
                _clients[options] = client
    return client


def _build_client(options: S3Options) -> S3Client:
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        aws_session_token=options.session_token,
        region_name=options.region,
    )
    config = Config(
        signature_version="s3v4",
        # Checked in S3Options.__post_init__; the field stays a plain str so settings can pass any string.
        s3={"addressing_style": cast(_AddressingStyle, options.addressing_style)},
        # total_max_attempts counts the first request, so max_attempts=1 means no retry at all.
        retries={"mode": "standard", "total_max_attempts": options.max_attempts},
        max_pool_connections=options.max_pool_connections,
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
    )
    return session.client("s3", endpoint_url=options.endpoint_url, config=config)


def _forget_clients_in_child() -> None:
    # A forked child (Celery prefork) must not share the parent's pooled sockets, and the lock may have been
    # held by another thread at fork time: start the child with no clients and a fresh lock.
    global _clients_lock
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_clients_in_child)


class S3Store(Store):
    """Objects under ``s3://bucket/prefix``; key ``k`` is the object ``prefix/k``."""

    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name: {bucket!r}")
        self.bucket = bucket
        self.prefix = check_prefix(prefix.strip("/"))
        self.options = options or S3Options()
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._transfer = TransferConfig(
            multipart_threshold=self.options.multipart_threshold_mb * _MB,
            max_concurrency=min(10, self.options.max_pool_connections),
            # The CRT transfer client would ignore this configuration and the client's retry settings.
            preferred_transfer_client="classic",
        )

    @property
    def client(self) -> S3Client:
        """The process-wide client for this store's options."""
        return s3_client(self.options)

    def object_key(self, key: str) -> str:
        """Return the full S3 object key of ``key`` (the store prefix included)."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def url_for(self, key: str) -> str:
        """Return ``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def read(self, key: str) -> bytes:
        """Return the object's bytes; ObjectNotFound if it does not exist."""
        with self.get(key) as answer:
            return answer.read()

    def get(self, key: str, *, start: int | None = None, stop: int | None = None) -> S3Answer:
        """GET the object, or its bytes [start, stop), and leave the body unread: the caller sees the size
        before it reads (and closes the answer). A range that starts past the object's end is a StorageError.
        """
        object_key = self.object_key(key)
        url = self.url_for(key)
        try:
            if start is None:
                response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            else:
                last = "" if stop is None else stop - 1
                response = self.client.get_object(
                    Bucket=self.bucket, Key=object_key, Range=f"bytes={start}-{last}"
                )
            return S3Answer(response, url)
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "read", url) from exc

    def write(self, key: str, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        """Put ``data`` in one request, replacing any existing object; return its URL."""
        object_key = self.object_key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "write", self.url_for(key)) from exc
        return self.url_for(key)

    def upload_file(
        self, key: str, path: str | os.PathLike[str], content_type: str = DEFAULT_CONTENT_TYPE
    ) -> str:
        """Upload a local file with boto3's managed transfer: in parallel parts above the threshold."""
        object_key = self.object_key(key)
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise ObjectNotFound(f"no such file to upload: {source}", url=source)
        try:
            self.client.upload_file(
                Filename=source,
                Bucket=self.bucket,
                Key=object_key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise wrap_error(exc, "upload", self.url_for(key)) from exc
        return self.url_for(key)

    def size(self, key: str) -> int:
        """The object's size in bytes (one HEAD request); ObjectNotFound if it does not exist."""
        object_key = self.object_key(key)
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=object_key)["ContentLength"])
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "read", self.url_for(key)) from exc

    def exists(self, key: str) -> bool:
        """Return whether the object exists (one HEAD request)."""
        object_key = self.object_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=object_key)
        except (BotoCoreError, ClientError) as exc:
            error = wrap_error(exc, "check", self.url_for(key))
            if isinstance(error, ObjectNotFound):
                return False
            raise error from exc
        return True

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        """Yield keys starting with ``prefix`` in S3's byte order, one listing page (1000 keys) at a time."""
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=base + prefix)
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    key = entry["Key"][len(base) :]
                    # Zero-byte "folder/" markers made by consoles and some tools are not objects to process.
                    if key and not key.endswith("/"):
                        yield key
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "list", f"{self.url}/{prefix}" if prefix else self.url) from exc

    def check_writable(self) -> None:
        """The bucket exists and these credentials may use it (HEAD on the bucket; writes stay untested)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            error = wrap_error(exc, "reach the bucket of", self.url)
            if isinstance(error, ObjectNotFound):
                raise ObjectNotFound(f"the bucket {self.bucket!r} does not exist", url=self.url) from exc
            raise error from exc

    def presign(self, key: str, seconds: int) -> str:
        """A presigned GET link to the object, valid for ``seconds``: signed here with the client's
        credentials, without a request (the object is not checked)."""
        params = {"Bucket": self.bucket, "Key": self.object_key(key)}
        try:
            return self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=check_presign_seconds(seconds)
            )
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "presign", self.url_for(key)) from exc

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""
        object_key = self.object_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=object_key)
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "delete", self.url_for(key)) from exc


class S3Answer:
    """The answer to a GET, its body not read yet: ``size`` comes from the response headers."""

    def __init__(self, response: GetObjectOutputTypeDef, url: str) -> None:
        self.url = url
        self._body = response["Body"]
        #: Bytes in this answer (Content-Length): the object's, or the range's.
        self.size = int(response.get("ContentLength", 0))
        #: Bytes in the whole object: from Content-Range for a ranged GET.
        self.total = self.size
        ranged = _CONTENT_RANGE.match(response.get("ContentRange", ""))
        if ranged is not None:
            self.total = int(ranged["total"])

    def read(self, amount: int | None = None) -> bytes:
        """``amount`` bytes of the body, or the rest of it; connection faults are StorageUnavailable."""
        try:
            return self._body.read(amount)
        except (BotoCoreError, ClientError) as exc:
            raise wrap_error(exc, "read", self.url) from exc

    def close(self) -> None:
        """Let go of the connection; a body left unread is not read to its end."""
        self._body.close()

    def __enter__(self) -> S3Answer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wrap_error(exc: Exception, action: str, url: str) -> StorageError:
    """Translate a boto3 / botocore error into the package's error for ``url``; the caller raises it."""
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        # boto3 replaces the ClientError of a managed upload by this one, keeping it only as the context.
        exc = exc.__context__
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        detail = f"cannot {action} {url}: {code or status} {error.get('Message', '')}".rstrip()
        if code in _NOT_FOUND_CODES or status == 404:
            return ObjectNotFound(detail, url=url)
        if code in _DENIED_CODES or status == 403:
            return AccessDenied(detail, url=url)
        if code in _UNAVAILABLE_CODES or status == 429 or status >= 500:
            return StorageUnavailable(f"{detail} (after retries)", url=url)
        return StorageError(detail, url=url)
    if isinstance(exc, EndpointUnreachable | HTTPClientError | IncompleteReadError):
        return StorageUnavailable(f"cannot {action} {url}: {exc}", url=url)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return AccessDenied(f"cannot {action} {url}: {exc}", url=url)
    return StorageError(f"cannot {action} {url}: {exc}", url=url)
