"""Real worker processes for integration tests: `ovis-batch worker` started as a user would start it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """Environment of a producer / worker pair on the real services."""

    env: dict[str, str]
    bucket: str
    home: Path

    def rows(self, sql: str, **params: object) -> list[dict[str, Any]]:
        """Rows of a SQL query on the stack's database, read independently of the project."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.env["OVIS_BATCH_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return [dict(row._mapping) for row in conn.execute(text(sql), params)]
        finally:
            engine.dispose()

    def s3(self) -> Any:
        """A boto3 client on the stack's S3 endpoint, for checking effects independently of the project."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.env["OVIS_BATCH_S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def written(self, key: str, timeout: float = 120) -> bytes:
        """The object at `key` in the stack's bucket, once written: a job's results file lands just after its
        row says it ended (or later, from the reconciler, when storage refused the first write)."""
        client = self.s3()

        def exists() -> bool:
            return bool(client.list_objects_v2(Bucket=self.bucket, Prefix=key).get("KeyCount"))

        wait_for(exists, timeout, f"{key} was not written")
        body: bytes = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def cli(
        self, *args: str, timeout: float = 120, check: bool = True, cwd: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `ovis-batch ARGS` with this stack's settings (in folder `cwd` if given)."""
        result = subprocess.run(
            [str(BIN / "ovis-batch"), *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ovis-batch {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result


@dataclass
class WorkerProcess:
    """One `ovis-batch worker` process and its log."""

    process: subprocess.Popen[bytes]
    log: Path
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def text(self) -> str:
        """What the worker has logged so far."""
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until Celery says the worker consumes."""
        deadline = time.monotonic() + timeout
        while " ready." not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not ready after {timeout}s:\n{self.text()[-4000:]}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait for the process to end; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


@pytest.fixture
def stack(redis_url: str, pg_database: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> Stack:
    """Settings for one test: its own PostgreSQL database, Redis, and an S3 bucket on moto_server."""
    return make_stack(
        database_url=pg_database,
        broker_url=redis_url,
        s3_endpoint=s3_endpoint,
        bucket=s3_bucket,
        home=tmp_path,
    )


@pytest.fixture
def stack_on(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> Callable[..., Stack]:
    """Make a stack on the database and broker given (throwaway servers, say) and the test's S3 bucket."""

    def make(*, database_url: str, broker_url: str) -> Stack:
        return make_stack(
            database_url=database_url,
            broker_url=broker_url,
            s3_endpoint=s3_endpoint,
            bucket=s3_bucket,
            home=tmp_path,
        )

    return make


def make_stack(*, database_url: str, broker_url: str, s3_endpoint: str, bucket: str, home: Path) -> Stack:
    """A stack on the given services (a throwaway Redis or PostgreSQL, say), its schema migrated."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVIS_BATCH_")}
    env.update(
        {
            "OVIS_BATCH_HOME": str(home / "home"),
            "OVIS_BATCH_DATABASE_URL": database_url,
            "OVIS_BATCH_BROKER_URL": broker_url,
            "OVIS_BATCH_STORAGE_URL": f"s3://{bucket}/outputs",
            "OVIS_BATCH_INPUT_ROOTS": f"s3://{bucket}/inputs,{home}",
            "OVIS_BATCH_S3_ENDPOINT_URL": s3_endpoint,
            "OVIS_BATCH_S3_REGION": "us-east-1",
            "OVIS_BATCH_S3_ADDRESSING_STYLE": "path",
            "OVIS_BATCH_QUEUE": f"t{uuid.uuid4().hex[:8]}",
            "OVIS_BATCH_BACKEND": "fake",
            "OVIS_BATCH_CHUNK_SIZE": "4",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "PYTHONUNBUFFERED": "1",
        }
    )
    result = subprocess.run(
        [str(BIN / "ovis-batch"), "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return Stack(env=env, bucket=bucket, home=home)


@pytest.fixture
def start_worker(stack: Stack, spawn_worker: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    """Start worker processes on the stack; every one still running is killed at the end."""

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        return spawn_worker(*args, env=env or stack.env, wait=wait)

    return start


@pytest.fixture
def spawn_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes with the environment given; every one still running is killed at the end."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str], wait: bool = True) -> WorkerProcess:
        log = tmp_path / f"worker{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(BIN / "ovis-batch"), "worker", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        if worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait(10)


def wait_for(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    """Poll `predicate` until true, failing with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.25)
