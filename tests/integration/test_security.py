"""Security with real processes and services: JSON-only messages, confined inputs (on every read), inputs that
cannot stop or stall a worker, chunks refused when their task is of another kind than their job, secrets kept
out of the database, the broker and the logs, Flower behind authentication, password-protected Redis and
PostgreSQL (TLS URLs and secrets in settings: tests/unit/test_settings_secrets.py)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import redis
from kombu import Connection
from psycopg import sql
from sqlalchemy import create_engine, text

from jobs.broker import TASK_NAMES, make_celery, queue_for
from jobs.lifecycle import JobKind
from jobs.settings import Settings
from tests.helpers import sample_photo
from tests.plugins.services import ThrowawayPostgres, ThrowawayRedis, free_port, libpq_dsn
from tests.plugins.workers import BIN, Stack, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def _job_status(stack: Stack, job_id: str) -> dict[str, Any]:
    return dict(json.loads(stack.cli("status", job_id, "--json").stdout))


def _wait_succeeded(stack: Stack, job_id: str, timeout: float = 60) -> dict[str, Any]:
    wait_for(
        lambda: _job_status(stack, job_id)["status"] not in ("queued", "running"),
        timeout,
        f"job {job_id} did not end",
    )
    report = _job_status(stack, job_id)
    assert report["status"] == "succeeded", report
    return report


def _prompts(stack: Stack, count: int) -> str:
    path = stack.home / f"prompts-{uuid.uuid4().hex[:6]}.txt"
    path.write_text("".join(f"a lighthouse at dusk, take {i}\n" for i in range(count)))
    return str(path)


# -- messages ------------------------------------------------------------------------------------------------
class _Exploit:
    """Unpickling this creates a file: proof that a worker ran code from a message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_pickle_messages_are_refused_and_the_worker_keeps_working(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker("--gpus", "none")
    queue = f"{stack.env['OVIS_BATCH_QUEUE']}.generate"
    as_task, as_message = stack.home / "ran-from-task", stack.home / "ran-from-message"
    # A task message in Celery's own format, serialized with pickle, as an attacker on the broker would send.
    settings = Settings(broker_url=stack.env["OVIS_BATCH_BROKER_URL"], queue=stack.env["OVIS_BATCH_QUEUE"])
    app = make_celery(settings)
    app.send_task("ovis.generate", args=[_Exploit(as_task), 0, 1], queue=queue, serializer="pickle")
    app.close()
    # And a bare kombu message with a pickle body straight into the queue's list.
    with Connection(stack.env["OVIS_BATCH_BROKER_URL"]) as connection:
        producer = connection.Producer()
        producer.publish(_Exploit(as_message), exchange="", routing_key=queue, serializer="pickle")
    refusals = ("Received invalid task message", "Can't decode message body")  # the task, the bare message
    wait_for(
        lambda: all(refusal in worker.text() for refusal in refusals),
        30,
        f"the worker did not refuse both pickle messages:\n{worker.text()[-3000:]}",
    )
    job_id = stack.cli("submit", "generate", "--input", _prompts(stack, 3)).stdout.split()[-1]
    _wait_succeeded(stack, job_id)
    assert not as_task.exists() and not as_message.exists(), "a pickle payload ran in the worker"
    assert worker.process.poll() is None
    lines = [line for line in worker.text().splitlines() if any(refusal in line for refusal in refusals)]
    print("SECURITY pickle: both messages refused, neither ran, a JSON job completed after them:")
    for line in lines:
        print(f"  {line.split(': ', 1)[-1][:150]}")


# -- inputs --------------------------------------------------------------------------------------------------
def test_inputs_outside_the_roots_are_refused_at_submit(stack: Stack) -> None:
    bucket = stack.bucket
    refused = {
        "path traversal": "../../../../../../../../etc/passwd",
        "absolute path outside": "/etc/passwd",
        "file URL": "file:///etc/shadow",
        "other bucket": "s3://someone-elses-bucket/inputs/cat.jpg",
        "bucket outside the prefix": f"s3://{bucket}/outputs/cat.jpg",
        "prefix look-alike": f"s3://{bucket}/inputs-private/cat.jpg",
        "dot segments in a key": f"s3://{bucket}/inputs/../outputs/cat.jpg",
        "http to loopback": "http://127.0.0.1:6379/cat.jpg",
        "cloud metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https elsewhere": "https://example.com/cat.jpg",
    }
    outcomes: dict[str, str] = {}
    for case, image in refused.items():
        manifest = stack.home / f"{case.replace(' ', '-')}.jsonl"
        manifest.write_text(json.dumps({"id": "x", "image": image, "instruction": "make it red"}) + "\n")
        result = stack.cli("submit", "edit", "--input", str(manifest), check=False)
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 2, (case, output)
        assert "outside the allowed input roots" in output and "OVIS_BATCH_INPUT_ROOTS" in output, (
            case,
            output,
        )
        outcomes[case] = output
    assert "0 jobs" in _job_count(stack), "a refused submission left a job behind"
    print(f"SECURITY inputs: {len(refused)} inputs outside the roots refused at submit (input_not_allowed)")
    print(f"  e.g. {outcomes['path traversal'][:200]}")


def test_a_source_that_is_not_storage_is_refused_with_what_is_accepted(stack: Stack) -> None:
    result = stack.cli("submit", "caption", "--input", "http://169.254.169.254/latest/", check=False)
    assert result.returncode == 2 and "expected s3://bucket" in " ".join(result.stderr.split()), result.stderr
    assert "0 jobs" in _job_count(stack)


def _job_count(stack: Stack) -> str:
    return f"{stack.rows('SELECT count(*) AS n FROM jobs')[0]['n']} jobs"


# -- inputs that cannot stop a worker -----------------------------------------------------------------------
#: On PYTHONPATH, makes a worker's decoding raise for marked inputs and its backend's prepare for images 17
#: pixels wide (tests/fault_injection/sitecustomize.py).
FAULTS = Path(__file__).resolve().parents[1] / "fault_injection"


def _broker_settings(stack: Stack) -> Settings:
    return Settings(broker_url=stack.env["OVIS_BATCH_BROKER_URL"], queue=stack.env["OVIS_BATCH_QUEUE"])


def _purge(stack: Stack, kind: JobKind) -> int:
    """Take every message out of a kind's queue, as if they had not been sent; return how many there were."""
    app = make_celery(_broker_settings(stack))
    try:
        with app.connection_for_write() as connection:
            return int(connection.default_channel.queue_purge(queue_for(_broker_settings(stack), kind)))
    finally:
        app.close()


def _send(stack: Stack, task: JobKind, job_id: str, start: int, stop: int) -> None:
    """Send one chunk task by name, as `celery call ovis.<kind> --args ...` would."""
    app = make_celery(_broker_settings(stack))
    try:
        app.send_task(
            TASK_NAMES[task], args=[job_id, start, stop], queue=queue_for(_broker_settings(stack), task)
        )
    finally:
        app.close()


def _items(stack: Stack, job_id: str) -> dict[str, dict[str, Any]]:
    rows = stack.rows(
        "SELECT key, status, error_code, error_message, attempts, worker, output FROM items "
        "WHERE job_id = :job",
        job=job_id,
    )
    return {row["key"]: row for row in rows}


def _wait_ended(stack: Stack, job_id: str, timeout: float = 90) -> dict[str, Any]:
    wait_for(
        lambda: _job_status(stack, job_id)["status"] not in ("queued", "running"),
        timeout,
        f"job {job_id} did not end",
    )
    return _job_status(stack, job_id)


def _bad_inputs(folder: Path) -> dict[str, tuple[str, str | None]]:
    """Inputs in `folder` that each once stopped or stalled a worker, and good ones: id -> (image, code)."""
    folder.mkdir()
    cases: dict[str, tuple[str, str | None]] = {}
    for index in range(3):
        sample_photo(size=48).save(folder / f"good{index}.jpg")
        cases[f"good{index}"] = (str(folder / f"good{index}.jpg"), None)
    os.mkfifo(folder / "fifo.jpg")  # opened for reading, it waits for a writer
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "socket.jpg"))
    listener.close()
    (folder / "folder.jpg").mkdir()
    with open(folder / "sparse.png", "wb") as sparse:
        sparse.truncate(600 * 1024 * 1024)  # read whole, 600 MB of zeros in the worker's memory
    payload = io.BytesIO()
    sample_photo(size=48).save(payload, "PNG")
    with tarfile.open(folder / "shard.tar", "w") as tar:
        info = tarfile.TarInfo("m.png")
        info.size = len(payload.getvalue())
        tar.addfile(info, io.BytesIO(payload.getvalue()))
    (folder / "memory.png").write_bytes(b"MEMORY: decoding this raises MemoryError")
    (folder / "recursion.png").write_bytes(b"RECURSE: decoding this raises RecursionError")
    sample_photo(size=48).resize((17, 17)).save(folder / "refused-by-prepare.png")
    cases.update(
        {
            "fifo": (str(folder / "fifo.jpg"), "input_missing"),
            "socket": (str(folder / "socket.jpg"), "input_missing"),
            "folder": (str(folder / "folder.jpg"), "input_missing"),
            "sparse": (str(folder / "sparse.png"), "image_too_large"),
            "member": (f"{folder}/shard.tar#m.png@512+{info.size}", None),
            "forged-member": (f"{folder}/shard.tar#m.png@0+1000000000000000", "image_too_large"),
            "memory": (str(folder / "memory.png"), "internal_error"),
            "recursion": (str(folder / "recursion.png"), "internal_error"),
            "refused-by-prepare": (str(folder / "refused-by-prepare.png"), "internal_error"),
        }
    )
    return cases


def test_no_input_stops_or_stalls_a_worker(stack: Stack, start_worker: Callable[..., WorkerProcess]) -> None:
    env = dict(
        stack.env, PYTHONPATH=os.pathsep.join(filter(None, [str(FAULTS), os.environ.get("PYTHONPATH")]))
    )
    worker = start_worker("--gpus", "none", env=env)
    cases = _bad_inputs(stack.home / "in")
    manifest = stack.home / "bad.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": key, "image": image}) + "\n" for key, (image, _) in cases.items())
    )

    job_id = stack.cli("submit", "caption", "--input", str(manifest)).stdout.split()[-1]
    report = _wait_ended(stack, job_id)

    items = _items(stack, job_id)
    outcome = {key: (row["status"], row["error_code"]) for key, row in items.items()}
    expected = {key: ("failed", code) if code else ("succeeded", None) for key, (_, code) in cases.items()}
    assert outcome == expected, outcome
    assert report["status"] == "partial" and all(row["attempts"] == 1 for row in items.values())
    assert items["memory"]["error_message"] == "MemoryError"
    assert "OVIS_BATCH_MAX_IMAGE_BYTES" in items["forged-member"]["error_message"]
    assert "is a FIFO, not a file" in items["fifo"]["error_message"]
    assert worker.process.poll() is None, "the worker stopped"
    # Bad input is one WARNING line; what no check foresaw is an ERROR with its traceback.
    lines = worker.text().splitlines()
    for key, (_, code) in cases.items():
        if code is None:
            continue
        [at] = [n for n, line in enumerate(lines) if f"item {key} of job {job_id} failed" in line]
        internal = code == "internal_error"
        assert ("ERROR" if internal else "WARNING") in lines[at], lines[at]
        assert lines[at + 1].startswith("Traceback") if internal else "Traceback" not in lines[at + 1], key
    # And it goes on: the next job runs on the same worker process.
    next_job = stack.cli("submit", "generate", "--input", _prompts(stack, 2)).stdout.split()[-1]
    _wait_succeeded(stack, next_job)
    assert worker.process.poll() is None
    failed = sum(code is not None for _, code in cases.values())
    print(f"WORKER LIVES: {len(cases)} inputs, {failed} failed with their codes, the next job ran:")
    for key, (status, code) in outcome.items():
        print(f"  {key:20} {status:9} {code or ''}")


def test_a_chunk_sent_as_another_kind_of_task_is_refused(
    stack: Stack, start_worker: Callable[..., WorkerProcess]
) -> None:
    sample_photo(size=48).save(stack.home / "cat.jpg")
    manifest = stack.home / "edits.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"id": f"e{i}", "image": "cat.jpg", "instruction": "red"}) + "\n" for i in range(3)
        )
    )
    job_id = stack.cli("submit", "edit", "--input", str(manifest)).stdout.split()[-1]
    assert _purge(stack, JobKind.EDIT) == 1  # the job's one chunk, held back for now
    worker = start_worker("--gpus", "none", env=dict(stack.env, OVIS_BATCH_RECONCILE_INTERVAL_S="0"))

    _send(stack, JobKind.CAPTION, job_id, 0, 3)  # a stock `celery call ovis.caption` with the edit job's id
    refusal = "came as a caption task for a job of kind edit, whose chunks are ovis.edit tasks"
    wait_for(lambda: refusal in worker.text(), 60, f"no refusal logged:\n{worker.text()[-3000:]}")
    [line] = [line for line in worker.text().splitlines() if refusal in line]
    assert "WARNING" in line and job_id in line
    untouched = {
        key: (row["status"], row["attempts"], row["worker"], row["output"])
        for key, row in _items(stack, job_id).items()
    }
    assert untouched == {f"e{i}": ("queued", 0, None, None) for i in range(3)}
    assert _job_status(stack, job_id)["status"] == "queued"

    _send(stack, JobKind.EDIT, job_id, 0, 3)
    assert _wait_succeeded(stack, job_id)["succeeded"] == 3
    assert all(row["output"].endswith(".png") for row in _items(stack, job_id).values())
    print(f"KIND: {line.split(': ', 1)[-1][:160]}")


def test_a_folder_swapped_for_a_link_between_two_chunks_is_refused_on_the_second(
    stack: Stack, start_worker: Callable[..., WorkerProcess], tmp_path_factory: pytest.TempPathFactory
) -> None:
    photos, outside = stack.home / "photos", tmp_path_factory.mktemp("outside-the-roots")
    for folder in (photos, outside):
        folder.mkdir(exist_ok=True)
        for index in range(8):
            sample_photo(size=48).save(folder / f"p{index}.jpg")  # readable on both sides
    manifest = stack.home / "photos.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"p{i}", "image": f"photos/p{i}.jpg"}) + "\n" for i in range(8))
    )
    job_id = stack.cli("submit", "caption", "--input", str(manifest)).stdout.split()[-1]
    assert _purge(stack, JobKind.CAPTION) == 2  # chunks of 4 (OVIS_BATCH_CHUNK_SIZE), sent below one by one
    # Nothing read ahead of a chunk and no re-dispatch: each chunk reads its items when it is sent.
    env = dict(stack.env, OVIS_BATCH_READ_AHEAD="false", OVIS_BATCH_RECONCILE_INTERVAL_S="0")
    start_worker("--gpus", "none", env=env)

    _send(stack, JobKind.CAPTION, job_id, 0, 4)
    wait_for(lambda: _job_status(stack, job_id)["succeeded"] == 4, 60, "the first chunk did not run")
    photos.rename(stack.home / "photos-before")
    photos.symlink_to(outside)
    _send(stack, JobKind.CAPTION, job_id, 4, 8)
    report = _wait_ended(stack, job_id)

    items = _items(stack, job_id)
    assert {key: (row["status"], row["error_code"]) for key, row in items.items()} == {
        **{f"p{i}": ("succeeded", None) for i in range(4)},
        **{f"p{i}": ("failed", "input_not_allowed") for i in range(4, 8)},
    }
    assert report["status"] == "partial"
    print(f"SECURITY swap: after the folder became a link outside, {report['failed']} items refused at once")


# -- secrets -------------------------------------------------------------------------------------------------
def _require_password(server: ThrowawayPostgres, password: str) -> None:
    """Give user postgres a password and make TCP clients use it (scram-sha-256)."""
    with psycopg.connect(libpq_dsn(server.url), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
        (server.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        conn.execute("SELECT pg_reload_conf()")


def _redis_dump(url: str) -> bytes:
    """Every key and value Redis holds, with Celery message bodies base64-decoded."""
    client = redis.Redis.from_url(url)
    parts: list[bytes] = []
    for key in client.scan_iter():
        kind = client.type(key)
        values: list[Any]
        if kind == b"list":
            values = list(client.lrange(key, 0, -1))
        elif kind == b"hash":
            values = [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = list(client.zrange(key, 0, -1))
        else:
            values = [client.dump(key) or b""]
        parts.append(key)
        for value in values:
            parts.append(value)
            with contextlib.suppress(ValueError, KeyError, TypeError):
                parts.append(base64.b64decode(json.loads(value)["body"]))
    client.close()
    return b"\n".join(parts)


def _database_text(url: str) -> str:
    """Every text, varchar and JSON value of every table."""
    engine = create_engine(url)
    parts: list[str] = []
    with engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' "
                "AND data_type IN ('text', 'character varying', 'json', 'jsonb')"
            )
        ).all()
        for table, column in columns:
            query = sql.SQL("SELECT {}::text FROM {}").format(sql.Identifier(column), sql.Identifier(table))
            rendered = query.as_string(None)
            parts.extend(str(value) for value in conn.execute(text(rendered)).scalars() if value is not None)
    engine.dispose()
    return "\n".join(parts)


def test_secrets_stay_out_of_database_messages_and_logs(
    throwaway_redis: tuple[str, ThrowawayRedis],
    throwaway_postgres: tuple[str, ThrowawayPostgres],
    s3_endpoint: str,
    stack_on: Callable[..., Stack],
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    tag = uuid.uuid4().hex[:12]
    secrets = {
        "redis password": f"redispw-{tag}",
        "postgres password": f"pgpw-{tag}",
        "OVIS_BATCH_S3_SECRET_ACCESS_KEY": f"s3secret-{tag}",
        "AWS_SECRET_ACCESS_KEY": f"awssecret-{tag}",
    }
    redis_url, _ = throwaway_redis
    postgres_url, postgres_server = throwaway_postgres
    client = redis.Redis.from_url(redis_url)
    client.config_set("requirepass", secrets["redis password"])
    client.close()
    _require_password(postgres_server, secrets["postgres password"])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(redis_url).ping()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(libpq_dsn(postgres_url), connect_timeout=3).close()

    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    broker_url = f"redis://:{secrets['redis password']}@127.0.0.1:{port}/0"
    database_url = postgres_url.replace("postgres@", f"postgres:{secrets['postgres password']}@", 1)
    stack = stack_on(database_url=database_url, broker_url=broker_url)
    stack.env.update(
        OVIS_BATCH_S3_ACCESS_KEY_ID="ovis-access-key",
        OVIS_BATCH_S3_SECRET_ACCESS_KEY=secrets["OVIS_BATCH_S3_SECRET_ACCESS_KEY"],
        AWS_SECRET_ACCESS_KEY=secrets["AWS_SECRET_ACCESS_KEY"],
    )
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    for index in range(3):
        buffer = io.BytesIO()
        sample_photo(("astronaut.png", "chelsea.png", "coffee.png")[index]).save(buffer, "JPEG")
        s3.put_object(Bucket=stack.bucket, Key=f"inputs/photos/p{index}.jpg", Body=buffer.getvalue())

    # Submitted with no worker running: the messages stay in Redis to be read as they are.
    submitted = stack.cli("submit", "caption", "--input", f"s3://{stack.bucket}/inputs/photos")
    job_id = submitted.stdout.split()[-1]
    messages = _redis_dump(broker_url)
    assert job_id.encode() in messages, "the chunk messages were not captured"
    worker = spawn_worker("--gpus", "none", "--loglevel", "DEBUG", env=stack.env)  # the chattiest log
    report = _wait_succeeded(stack, job_id)
    assert report["succeeded"] == 3
    status = stack.cli("status", job_id)
    stack.cli("reconcile")
    worker.stop()

    # Wrong passwords fail without echoing what was tried.
    wrong = dict(stack.env, OVIS_BATCH_BROKER_URL=f"redis://:wrong-{tag}@127.0.0.1:{port}/0")
    refused_broker = Stack(env=wrong, bucket=stack.bucket, home=stack.home).cli(
        "submit", "generate", "--input", _prompts(stack, 1), check=False, timeout=120
    )
    wrong = dict(
        stack.env, OVIS_BATCH_DATABASE_URL=postgres_url.replace("postgres@", f"postgres:wrong-{tag}@")
    )
    refused_database = Stack(env=wrong, bucket=stack.bucket, home=stack.home).cli(
        "status", job_id, check=False
    )
    for result in (refused_broker, refused_database):
        assert result.returncode != 0
        assert f"wrong-{tag}" not in result.stdout + result.stderr

    haystacks = {
        "worker log": worker.text().encode(),
        "CLI output": (submitted.stdout + submitted.stderr + status.stdout + status.stderr).encode(),
        "failed-connection output": (refused_broker.stderr + refused_database.stderr).encode(),
        "Redis keys and messages": messages + _redis_dump(broker_url),
        "database text columns": _database_text(database_url).encode(),
    }
    leaks = [
        f"{name} in {where}"
        for name, secret in secrets.items()
        for where, haystack in haystacks.items()
        if secret.encode() in haystack or base64.b64encode(secret.encode()) in haystack
    ]
    assert leaks == []
    sizes = ", ".join(f"{where} {len(haystack)} B" for where, haystack in haystacks.items())
    print(f"SECURITY secrets: {len(secrets)} secrets found nowhere in: {sizes}")
    print("  the job ran through Redis with requirepass and PostgreSQL with scram-sha-256 passwords")


# -- Flower --------------------------------------------------------------------------------------------------
def test_flower_refuses_to_listen_beyond_localhost_without_auth(stack: Stack) -> None:
    for address in ("0.0.0.0", "::", "10.1.2.3"):
        result = stack.cli("flower", "--address", address, check=False, timeout=60)
        assert result.returncode != 0, address
        assert "OVIS_BATCH_FLOWER_BASIC_AUTH" in " ".join(result.stderr.split()), result.stderr
    # A host name cannot be checked for loopback: refused too (and nothing listens).
    assert stack.cli("flower", "--address", "flower.example.com", check=False, timeout=60).returncode != 0
    print(
        "SECURITY flower: without OVIS_BATCH_FLOWER_BASIC_AUTH refused on 0.0.0.0, ::, 10.1.2.3, a host name"
    )


def test_flower_with_auth_on_all_interfaces_answers_401(stack: Stack, tmp_path: Path) -> None:
    import requests

    port = free_port()
    env = dict(stack.env, OVIS_BATCH_FLOWER_BASIC_AUTH="admin:flower-secret")
    with open(tmp_path / "flower.log", "wb") as log:
        process = subprocess.Popen(
            [str(BIN / "ovis-batch"), "flower", "--address", "0.0.0.0", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def answers() -> bool:
            assert process.poll() is None, (tmp_path / "flower.log").read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(answers, 60, "Flower did not start")
        assert requests.get(f"http://127.0.0.1:{port}/api/workers", timeout=10).status_code == 401
        auth = ("admin", "flower-secret")
        assert requests.get(f"http://127.0.0.1:{port}/api/workers", auth=auth, timeout=10).status_code == 200
        assert "flower-secret" not in (tmp_path / "flower.log").read_text()
    finally:
        process.terminate()
        process.wait(20)
