"""Pytest fixtures for a real S3 server: ``moto_server`` over HTTP on 127.0.0.1, one per test session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import boto3
import pytest

from storage import S3Options
from tests.plugins.services import free_port, service_unavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

_START_TIMEOUT_S = 60.0
#: Ports tried before giving up, when another process takes the one picked before moto_server binds it.
_PORT_TRIES = 5


def _unavailable(reason: str) -> NoReturn:
    service_unavailable("S3 server", reason)


def _moto_server_path() -> str | None:
    candidate = Path(sys.executable).parent / "moto_server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("moto_server")


def _answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``moto_server`` on a free port, yield its endpoint URL, and stop it at the end of the session."""
    executable = _moto_server_path()
    if executable is None:
        _unavailable("moto_server not found next to the Python interpreter (install moto[server])")
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    process, endpoint = _start(executable, log_path)
    try:
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(executable: str, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server on a free port; on another port when another process took that one first."""
    for attempt in range(1, _PORT_TRIES + 1):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        logged = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _says_it_runs(log_path, logged, endpoint) and _answers_http(endpoint):
                return process, endpoint
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        process.wait()
        if attempt == _PORT_TRIES or not _answers_http(endpoint):
            break
    tail = log_path.read_text(errors="replace")[-2000:]
    _unavailable(f"moto_server did not start on {endpoint}:\n{tail}")


def _says_it_runs(log_path: Path, offset: int, endpoint: str) -> bool:
    """Whether this moto_server logged (after `offset`) that it serves `endpoint`: the port answering is not
    enough, as another test run's server may hold it while this one failed to bind it."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        return f"Running on {endpoint}".encode() in log.read()


@pytest.fixture
def s3_options(s3_endpoint: str) -> S3Options:
    """S3Options for the test server: path-style addressing, us-east-1, dummy credentials."""
    return S3Options(
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
        addressing_style="path",
    )


@pytest.fixture
def s3_boto_client(s3_endpoint: str) -> S3Client:
    """A plain boto3 client for the test server, independent of the storage package, to check its effects."""
    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_bucket(s3_boto_client: S3Client) -> Iterator[str]:
    """A fresh, uniquely named, empty bucket on the test server; emptied and removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_boto_client.create_bucket(Bucket=name)
    yield name
    # The server lives for the whole session: free what this test stored.
    for page in s3_boto_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        keys: list[ObjectIdentifierTypeDef] = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
        if keys:
            s3_boto_client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
    s3_boto_client.delete_bucket(Bucket=name)
